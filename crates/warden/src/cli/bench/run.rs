//! One measured run of `warden bench` against one cluster: connecting,
//! preparing the workload (preloaded keys, per-client leases, watchers),
//! driving N clients with one request in flight each until `--total`
//! requests or `--duration` is reached, and collecting what they measured.
//!
//! Each client is a task over a shared pool of HTTP/2 connections spread
//! round-robin over the endpoints; latencies go into an HDR histogram
//! (microsecond resolution). Every request has a deadline (`--timeout-ms`);
//! in `--failover` mode a client whose request failed moves to the next
//! connection (so to the next endpoint), as an etcd client does.
//!
//! Must never: retry a failed request or record its latency (failures are
//! counted next to the successes), or leave leases behind that it granted
//! (they are revoked after the run; if that fails they expire).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Streaming;

use warden_client::endpoint::parse_endpoints;
use warden_client::TlsOptions;
use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::kv_client::KvClient;
use warden_proto::etcdserverpb::lease_client::LeaseClient;
use warden_proto::etcdserverpb::watch_client::WatchClient;
use warden_proto::v3lockpb;
use warden_proto::v3lockpb::lock_client::LockClient;
use warden_proto::warden::v1 as wpb;
use warden_proto::warden::v1::locks_client::LocksClient;

use super::keeper::{self, Keeper};
use super::{BenchArgs, BenchOp};

/// Keys read by the read workloads (and written by `txn-cas` and `mixed`)
/// are the first this many of the key space, written before the run.
pub const PRELOADED: u64 = 1000;
/// Prefix of the keys the `watch` workload writes and watches.
const WATCH_PREFIX: &[u8] = b"bench-watch/";
/// Prefix of the lock names of `v3lock` and `native-lock`.
const LOCK_PREFIX: &str = "bench-lock/";
/// How long watchers wait for missing events after the writers stop.
const WATCH_GRACE: Duration = Duration::from_secs(5);

/// One cluster to measure: its name in reports, endpoints and TLS.
#[derive(Clone, Debug)]
pub struct Target {
    pub label: String,
    pub endpoints: Vec<String>,
    pub tls: Option<TlsOptions>,
}

/// What the `watch` workload counted.
#[derive(Clone, Copy, Debug, Default)]
pub struct WatchCounts {
    pub watchers: usize,
    pub puts: u64,
    pub expected: u64,
    pub received: u64,
}

/// Everything one run measured.
pub struct RunResult {
    pub label: String,
    pub endpoints: Vec<String>,
    /// Successful requests (for `watch`: events received).
    pub ok: u64,
    pub errors: u64,
    pub seconds: f64,
    /// Latencies of the successful requests, µs.
    pub hist: Histogram<u64>,
    /// `txn-cas`: transactions whose compare failed.
    pub cas_failed: u64,
    /// `mixed`: (reads, writes) that succeeded.
    pub mixed: (u64, u64),
    /// `--keepalive-leases`: (renewals, renewals finding the lease expired).
    pub kept: Option<(u64, u64)>,
    pub watch: Option<WatchCounts>,
    /// (completion µs from the start, succeeded) of every request, when a
    /// timeline or the failover report needs them.
    pub events: Vec<(u64, bool)>,
    /// The run's start, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// The first error a client saw, for the report.
    pub first_error: Option<String>,
}

/// State shared by the clients of a run.
struct Control {
    next: AtomicU64,
    total: u64,
    deadline: Option<Instant>,
    ok: AtomicU64,
    errors: AtomicU64,
    start: Instant,
    timeout: Duration,
    record: bool,
    rotate: bool,
}

impl Control {
    /// Whether another request may start.
    fn claim(&self) -> bool {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        self.next.fetch_add(1, Ordering::Relaxed) < self.total
    }
}

/// What a successful request was.
enum Done {
    Plain,
    CasFailed,
    Read,
    Write,
}

/// The settings every client of a run shares.
struct Job {
    op: BenchOp,
    key_size: usize,
    space: u64,
    value: Vec<u8>,
    read_ratio: f64,
    lock_names: u64,
    /// Origin of the timestamps the `watch` writers put in their values.
    base: Instant,
}

/// One client: its connections, random state and per-workload state.
struct Worker {
    job: Arc<Job>,
    channels: Vec<Channel>,
    cur: usize,
    seed: u64,
    /// `txn-cas`: the mod revision this client last saw of each key.
    revs: HashMap<u64, i64>,
    lease: i64,
    keepalive: Option<(
        mpsc::Sender<pb::LeaseKeepAliveRequest>,
        Streaming<pb::LeaseKeepAliveResponse>,
    )>,
}

struct ClientOut {
    hist: Histogram<u64>,
    events: Vec<(u64, bool)>,
    cas_failed: u64,
    reads: u64,
    writes: u64,
    first_error: Option<String>,
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| anyhow!("histogram: {e}"))
}

/// Key number `i`, zero-padded to `size` bytes.
pub fn key(i: u64, size: usize) -> Vec<u8> {
    format!("{i:0width$}", width = size.max(1)).into_bytes()
}

/// The end of the range of keys starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The value a `watch` writer puts: its send time (µs since `base`) in 20
/// digits, padded with `v` to `size`.
fn stamped_value(sent_us: u64, size: usize) -> Vec<u8> {
    let mut v = format!("{sent_us:020}").into_bytes();
    if v.len() < size {
        v.resize(size, b'v');
    }
    v
}

/// The send time in a value written by [`stamped_value`].
fn sent_time(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value.get(..20)?).ok()?.parse().ok()
}

impl Worker {
    fn rand(&mut self) -> u64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }

    fn channel(&self) -> Channel {
        self.channels[self.cur % self.channels.len()].clone()
    }

    /// One request of the workload.
    async fn one(&mut self) -> anyhow::Result<Done> {
        let job = self.job.clone();
        let k = self.rand() % job.space.max(1);
        match job.op {
            BenchOp::Put => {
                self.put(key(k, job.key_size), job.value.clone()).await?;
                Ok(Done::Plain)
            }
            BenchOp::Get | BenchOp::GetSerializable => {
                self.get(
                    key(k, job.key_size),
                    matches!(job.op, BenchOp::GetSerializable),
                )
                .await?;
                Ok(Done::Plain)
            }
            BenchOp::Mixed => {
                let r = (self.rand() >> 11) as f64 / (1u64 << 53) as f64;
                if r < job.read_ratio {
                    self.get(key(k, job.key_size), false).await?;
                    Ok(Done::Read)
                } else {
                    self.put(key(k, job.key_size), job.value.clone()).await?;
                    Ok(Done::Write)
                }
            }
            BenchOp::TxnCas => self.cas(k).await,
            BenchOp::Watch => {
                let sent = job.base.elapsed().as_micros() as u64;
                let mut kk = WATCH_PREFIX.to_vec();
                kk.extend(key(k, job.key_size));
                self.put(kk, stamped_value(sent, job.value.len())).await?;
                Ok(Done::Plain)
            }
            BenchOp::V3lock => {
                let name = format!("{LOCK_PREFIX}{}", self.rand() % job.lock_names.max(1));
                let mut c = LockClient::new(self.channel());
                let held = c
                    .lock(v3lockpb::LockRequest {
                        name: name.into_bytes(),
                        lease: self.lease,
                    })
                    .await?
                    .into_inner();
                c.unlock(v3lockpb::UnlockRequest { key: held.key }).await?;
                Ok(Done::Plain)
            }
            BenchOp::NativeLock => {
                let name = format!("{LOCK_PREFIX}{}", self.rand() % job.lock_names.max(1));
                self.native_lock(name).await
            }
            BenchOp::LeaseKeepalive => self.keep_alive().await,
        }
    }

    async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        KvClient::new(self.channel())
            .put(pb::PutRequest {
                key,
                value,
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    async fn get(&self, key: Vec<u8>, serializable: bool) -> anyhow::Result<()> {
        KvClient::new(self.channel())
            .range(pb::RangeRequest {
                key,
                serializable,
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// Puts key `k` if its mod revision is still the one this client last
    /// saw; otherwise reads it (in the same transaction) to learn the new
    /// one.
    async fn cas(&mut self, k: u64) -> anyhow::Result<Done> {
        use pb::compare::{CompareResult, CompareTarget, TargetUnion};
        use pb::request_op::Request;
        let job = self.job.clone();
        let kb = key(k, job.key_size);
        let seen = self.revs.get(&k).copied().unwrap_or(0);
        let r = KvClient::new(self.channel())
            .txn(pb::TxnRequest {
                compare: vec![pb::Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    key: kb.clone(),
                    range_end: Vec::new(),
                    target_union: Some(TargetUnion::ModRevision(seen)),
                }],
                success: vec![pb::RequestOp {
                    request: Some(Request::RequestPut(pb::PutRequest {
                        key: kb.clone(),
                        value: job.value.clone(),
                        ..Default::default()
                    })),
                }],
                failure: vec![pb::RequestOp {
                    request: Some(Request::RequestRange(pb::RangeRequest {
                        key: kb,
                        ..Default::default()
                    })),
                }],
            })
            .await?
            .into_inner();
        if r.succeeded {
            let rev = r.header.map_or(0, |h| h.revision);
            self.revs.insert(k, rev);
            return Ok(Done::Plain);
        }
        let rev = r
            .responses
            .into_iter()
            .find_map(|op| match op.response {
                Some(pb::response_op::Response::ResponseRange(rr)) => {
                    Some(rr.kvs.first().map_or(0, |kv| kv.mod_revision))
                }
                _ => None,
            })
            .ok_or_else(|| anyhow!("txn failure branch answered without its range"))?;
        self.revs.insert(k, rev);
        Ok(Done::CasFailed)
    }

    /// Acquires `name` with warden's native lock service (waiting in its
    /// queue), then releases it.
    async fn native_lock(&mut self, name: String) -> anyhow::Result<Done> {
        use wpb::acquire_response::State;
        let mut c = LocksClient::new(self.channel());
        let mut stream = c
            .acquire(wpb::AcquireRequest {
                name: name.clone(),
                mode: wpb::LockMode::Exclusive as i32,
                lease: self.lease,
                ttl: 0,
                wait_timeout_ms: -1,
                priority: 0,
                owner: "warden bench".into(),
                handle: Vec::new(),
            })
            .await?
            .into_inner();
        let (token, handle) = loop {
            let m = stream
                .message()
                .await?
                .ok_or_else(|| anyhow!("acquire stream ended before the grant"))?;
            match State::try_from(m.state) {
                Ok(State::Granted) => break (m.token, m.handle),
                Ok(State::Queued) => {}
                _ => bail!("lock {name} not granted: {}", m.reason),
            }
        };
        c.release(wpb::ReleaseRequest {
            name,
            token,
            handle,
        })
        .await?;
        Ok(Done::Plain)
    }

    /// One keep-alive round trip of this client's lease on its own stream
    /// (opened on first use, and again after a failure).
    async fn keep_alive(&mut self) -> anyhow::Result<Done> {
        let req = pb::LeaseKeepAliveRequest { id: self.lease };
        let mut stream = match self.keepalive.take() {
            Some((tx, answers)) => {
                tx.send(req)
                    .await
                    .map_err(|_| anyhow!("keep-alive stream closed"))?;
                (tx, answers)
            }
            None => {
                // etcd (grpc-go) answers the call only once the first
                // request is sent, so it is queued before the call is made.
                let (tx, rx) = mpsc::channel(4);
                tx.send(req)
                    .await
                    .map_err(|_| anyhow!("keep-alive stream closed"))?;
                let answers = LeaseClient::new(self.channel())
                    .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                (tx, answers)
            }
        };
        let r = stream
            .1
            .message()
            .await?
            .ok_or_else(|| anyhow!("keep-alive stream ended"))?;
        if r.ttl <= 0 {
            bail!("lease {:x} found expired", self.lease);
        }
        self.keepalive = Some(stream);
        Ok(Done::Plain)
    }
}

async fn client_loop(mut w: Worker, ctl: Arc<Control>) -> anyhow::Result<ClientOut> {
    let mut out = ClientOut {
        hist: histogram()?,
        events: Vec::new(),
        cas_failed: 0,
        reads: 0,
        writes: 0,
        first_error: None,
    };
    while ctl.claim() {
        let t = Instant::now();
        let r = tokio::time::timeout(ctl.timeout, w.one()).await;
        let took = t.elapsed();
        let ok = match r {
            Ok(Ok(done)) => {
                match done {
                    Done::Plain => {}
                    Done::CasFailed => out.cas_failed += 1,
                    Done::Read => out.reads += 1,
                    Done::Write => out.writes += 1,
                }
                out.hist.saturating_record((took.as_micros() as u64).max(1));
                ctl.ok.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok(Err(e)) => {
                out.first_error.get_or_insert_with(|| format!("{e:#}"));
                false
            }
            Err(_) => {
                out.first_error
                    .get_or_insert_with(|| format!("timed out after {:?}", ctl.timeout));
                false
            }
        };
        if !ok {
            ctl.errors.fetch_add(1, Ordering::Relaxed);
            // A failed stream is not reused.
            w.keepalive = None;
            if ctl.rotate {
                w.cur = (w.cur + 1) % w.channels.len();
            }
        }
        if ctl.record {
            out.events
                .push(((t + took - ctl.start).as_micros() as u64, ok));
        }
    }
    Ok(out)
}

/// One connection to `ep` (over TLS with `tls`): made now, or in
/// `--failover` mode made lazily (a member that is down is then not an
/// error until it is used).
async fn connect(ep: &str, tls: Option<&TlsOptions>, lazy: bool) -> anyhow::Result<Channel> {
    let e = warden_client::tls::endpoint(ep, tls)?.connect_timeout(Duration::from_secs(3));
    if lazy {
        return Ok(e.connect_lazy());
    }
    e.connect()
        .await
        .with_context(|| format!("connecting to {ep}"))
}

/// Writes the first `n` keys (32 at a time); returns each key's mod
/// revision (the revision of its put).
async fn preload(ch: &Channel, n: u64, args: &BenchArgs) -> anyhow::Result<HashMap<u64, i64>> {
    let kv = KvClient::new(ch.clone());
    let value = vec![b'v'; args.val_size];
    let revs: Vec<(u64, i64)> = futures::stream::iter(0..n)
        .map(|i| {
            let mut kv = kv.clone();
            let value = value.clone();
            async move {
                let r = kv
                    .put(pb::PutRequest {
                        key: key(i, args.key_size),
                        value,
                        ..Default::default()
                    })
                    .await?;
                Ok::<_, tonic::Status>((i, r.into_inner().header.map_or(0, |h| h.revision)))
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .context("preloading keys")?;
    Ok(revs.into_iter().collect())
}

/// Fails with a clear message when the endpoint lacks warden's native lock
/// service (etcd does).
async fn check_native_locks(ch: &Channel, label: &str) -> anyhow::Result<()> {
    match LocksClient::new(ch.clone())
        .inspect(wpb::InspectRequest {
            name: LOCK_PREFIX.into(),
            prefix: true,
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::Unimplemented => bail!(
            "native-lock needs warden's own lock service (warden.v1.Locks), which {label} \
             does not offer (etcd has only v3lock: use the v3lock workload to compare)"
        ),
        Err(s) => Err(anyhow!("{label}: checking the native lock service: {s}")),
    }
}

/// A watcher task: its latencies and the events it received.
type Watcher = tokio::task::JoinHandle<anyhow::Result<(Histogram<u64>, u64)>>;

/// The watchers of the `watch` workload, started and confirmed.
struct Watchers {
    tasks: Vec<Watcher>,
    /// Set to the events each watcher should see, once the writers stop.
    expected: tokio::sync::watch::Sender<Option<u64>>,
}

async fn start_watchers(channels: &[Channel], n: usize, base: Instant) -> anyhow::Result<Watchers> {
    let (expected, done) = tokio::sync::watch::channel(None::<u64>);
    let mut tasks = Vec::new();
    for i in 0..n {
        let (tx, rx) = mpsc::channel(1);
        tx.send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: WATCH_PREFIX.to_vec(),
                    range_end: prefix_end(WATCH_PREFIX),
                    ..Default::default()
                },
            )),
        })
        .await
        .map_err(|_| anyhow!("watch request channel closed"))?;
        let mut stream = WatchClient::new(channels[i % channels.len()].clone())
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .context("opening a watch stream")?
            .into_inner();
        let created = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .context("waiting for the watch to be created")?
            .context("watch stream")?
            .ok_or_else(|| anyhow!("watch stream ended before it was created"))?;
        if !created.created || created.canceled {
            bail!("watch not created: {}", created.cancel_reason);
        }
        let mut done = done.clone();
        tasks.push(tokio::spawn(async move {
            let _keep_open = tx;
            let mut h = histogram()?;
            let mut received = 0u64;
            let mut deadline: Option<tokio::time::Instant> = None;
            loop {
                let want = *done.borrow();
                if let Some(want) = want {
                    if received >= want {
                        break;
                    }
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + WATCH_GRACE);
                }
                let msg = match deadline {
                    Some(d) => match tokio::time::timeout_at(d, stream.message()).await {
                        Ok(m) => m,
                        Err(_) => break,
                    },
                    None => tokio::select! {
                        m = stream.message() => m,
                        _ = done.changed() => continue,
                    },
                };
                let r = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => bail!("watch stream ended"),
                    Err(e) => bail!("watch stream: {e}"),
                };
                if r.canceled {
                    bail!("watch canceled: {}", r.cancel_reason);
                }
                let now = base.elapsed().as_micros() as u64;
                for ev in r.events {
                    if ev.r#type != warden_proto::mvccpb::event::EventType::Put as i32 {
                        continue;
                    }
                    if let Some(sent) = ev.kv.as_ref().and_then(|kv| sent_time(&kv.value)) {
                        h.saturating_record(now.saturating_sub(sent).max(1));
                        received += 1;
                    }
                }
            }
            Ok((h, received))
        }));
    }
    Ok(Watchers { tasks, expected })
}

/// Prints a live progress line on stderr until stopped, if stderr is a
/// terminal (nothing when it is piped or redirected).
fn progress(label: String, ctl: Arc<Control>) -> Option<tokio::sync::oneshot::Sender<()>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut last = (Instant::now(), 0u64);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stopped => break,
            }
            let ok = ctl.ok.load(Ordering::Relaxed);
            let errs = ctl.errors.load(Ordering::Relaxed);
            let dt = last.0.elapsed().as_secs_f64().max(1e-3);
            let rate = (ok - last.1.min(ok)) as f64 / dt;
            last = (Instant::now(), ok);
            let _ = write!(
                std::io::stderr(),
                "\r\x1b[K{label}: {:.1} s, {ok} ok, {rate:.0}/s, {errs} errors",
                ctl.start.elapsed().as_secs_f64()
            );
        }
        let _ = write!(std::io::stderr(), "\r\x1b[K");
    });
    Some(stop)
}

/// Runs the workload of `args` once against `target`.
pub async fn run_once(target: &Target, args: &BenchArgs) -> anyhow::Result<RunResult> {
    let label = &target.label;
    let endpoints = parse_endpoints(&target.endpoints)?;
    let lazy = args.failover;
    let n_channels = if args.failover {
        args.conns.max(endpoints.len())
    } else {
        args.conns
    };
    let mut channels = Vec::new();
    for i in 0..n_channels {
        let ep = &endpoints[i % endpoints.len()];
        channels.push(
            connect(ep, target.tls.as_ref(), lazy)
                .await
                .with_context(|| label.clone())?,
        );
    }
    // A connection of its own for leases and other side work, so the
    // measured clients share none with it.
    let side = connect(
        &endpoints[args.conns % endpoints.len()],
        target.tls.as_ref(),
        lazy,
    )
    .await
    .with_context(|| label.clone())?;
    let op = args.op;
    let space = match op {
        BenchOp::Get | BenchOp::GetSerializable | BenchOp::Mixed | BenchOp::TxnCas => {
            args.key_space.clamp(1, PRELOADED)
        }
        _ => args.key_space.max(1),
    };
    let revs = match op {
        BenchOp::Get | BenchOp::GetSerializable | BenchOp::Mixed | BenchOp::TxnCas => {
            preload(&channels[0], space, args)
                .await
                .with_context(|| label.clone())?
        }
        _ => HashMap::new(),
    };
    if matches!(op, BenchOp::NativeLock) {
        check_native_locks(&side, label).await?;
    }
    // Leases of the lock workloads, kept alive in the background; those of
    // lease-keepalive are renewed by the measured requests themselves.
    let lock_leases = match op {
        BenchOp::V3lock | BenchOp::NativeLock => Some(
            Keeper::start(side.clone(), args.clients, args.lock_ttl)
                .await
                .with_context(|| label.clone())?,
        ),
        _ => None,
    };
    let own_leases = match op {
        BenchOp::LeaseKeepalive => keeper::grant(&side, args.clients, args.lock_ttl)
            .await
            .with_context(|| label.clone())?,
        _ => Vec::new(),
    };
    let keeper = if args.keepalive_leases > 0 {
        let ch = connect(
            &endpoints[(args.conns + 1) % endpoints.len()],
            target.tls.as_ref(),
            lazy,
        )
        .await?;
        Some(Keeper::start(ch, args.keepalive_leases, args.keepalive_ttl).await?)
    } else {
        None
    };
    let base = Instant::now();
    let watchers = if matches!(op, BenchOp::Watch) {
        Some(
            start_watchers(&channels, args.watchers, base)
                .await
                .with_context(|| label.clone())?,
        )
    } else {
        None
    };
    let job = Arc::new(Job {
        op,
        key_size: args.key_size,
        space,
        value: vec![b'v'; args.val_size],
        read_ratio: args.read_ratio,
        lock_names: args.lock_names,
        base,
    });
    let total = match (args.total, args.duration) {
        (Some(t), _) => t,
        (None, Some(_)) => u64::MAX,
        (None, None) => super::DEFAULT_TOTAL,
    };
    let started = Instant::now();
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let ctl = Arc::new(Control {
        next: AtomicU64::new(0),
        total,
        deadline: args.duration.map(|d| started + Duration::from_secs_f64(d)),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        start: started,
        timeout: Duration::from_millis(args.request_timeout_ms()),
        record: args.failover || args.timeline.is_some(),
        rotate: args.failover,
    });
    let stop_progress = progress(label.clone(), ctl.clone());
    let lease_ids: Vec<i64> = match (&lock_leases, op) {
        (Some(k), _) => k.ids.to_vec(),
        (None, BenchOp::LeaseKeepalive) => own_leases.clone(),
        _ => Vec::new(),
    };
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let w = Worker {
            job: job.clone(),
            channels: channels.clone(),
            cur: c % channels.len(),
            seed: (c as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            revs: revs.clone(),
            lease: lease_ids.get(c).copied().unwrap_or(0),
            keepalive: None,
        };
        tasks.push(tokio::spawn(client_loop(w, ctl.clone())));
    }
    let mut out = RunResult {
        label: label.clone(),
        endpoints: target.endpoints.clone(),
        ok: 0,
        errors: 0,
        seconds: 0.0,
        hist: histogram()?,
        cas_failed: 0,
        mixed: (0, 0),
        kept: None,
        watch: None,
        events: Vec::new(),
        started_unix_ms,
        first_error: None,
    };
    let mut failure = None;
    for t in tasks {
        match t.await.context("bench client task") {
            Ok(Ok(c)) => {
                out.hist
                    .add(&c.hist)
                    .map_err(|e| anyhow!("histogram: {e}"))?;
                out.events.extend(c.events);
                out.cas_failed += c.cas_failed;
                out.mixed.0 += c.reads;
                out.mixed.1 += c.writes;
                if out.first_error.is_none() {
                    out.first_error = c.first_error;
                }
            }
            Ok(Err(e)) | Err(e) => failure = Some(e),
        }
    }
    out.seconds = started.elapsed().as_secs_f64();
    out.ok = ctl.ok.load(Ordering::Relaxed);
    out.errors = ctl.errors.load(Ordering::Relaxed);
    if let Some(w) = watchers {
        // The latencies of a watch run are those of its events.
        let puts = out.ok;
        let _ = w.expected.send(Some(puts));
        let mut h = histogram()?;
        let mut received = 0;
        for t in w.tasks {
            match t.await.context("watcher task") {
                Ok(Ok((wh, n))) => {
                    h.add(&wh).map_err(|e| anyhow!("histogram: {e}"))?;
                    received += n;
                }
                Ok(Err(e)) | Err(e) => failure = Some(e),
            }
        }
        out.hist = h;
        out.ok = received;
        out.watch = Some(WatchCounts {
            watchers: args.watchers,
            puts,
            expected: puts * args.watchers as u64,
            received,
        });
    }
    if let Some(stop) = stop_progress {
        let _ = stop.send(());
        // Let the progress task clear its line before the report.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(k) = keeper {
        out.kept = Some(k.finish().await?);
    }
    if let Some(k) = lock_leases {
        k.finish().await?;
    }
    if !own_leases.is_empty() {
        keeper::revoke(&side, &own_leases).await;
    }
    if let Some(e) = failure {
        return Err(e.context(format!("{label}: a client failed")));
    }
    out.events.sort_unstable();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_stamps() {
        assert_eq!(key(7, 4), b"0007".to_vec());
        assert_eq!(prefix_end(b"bench-watch/"), b"bench-watch0".to_vec());
        assert_eq!(prefix_end(&[0x61, 0xff]), vec![0x62]);
        let v = stamped_value(123_456, 64);
        assert_eq!(v.len(), 64);
        assert_eq!(sent_time(&v), Some(123_456));
        assert_eq!(stamped_value(5, 4).len(), 20);
        assert_eq!(sent_time(b"short"), None);
    }
}
