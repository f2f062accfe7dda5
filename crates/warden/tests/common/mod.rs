//! Multi-process test harness: starts real `warden server` children on ports
//! picked at run time, kills them with SIGKILL, restarts them on the same data
//! directory, and talks to them over the etcd gRPC API.
#![allow(dead_code)]

pub mod etcd;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::kv_client::KvClient;
use warden_proto::etcdserverpb::maintenance_client::MaintenanceClient;

pub const BIN: &str = env!("CARGO_BIN_EXE_warden");

/// A child process killed (and reaped) when dropped, however the test ends.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Ports for `n` listeners (see `warden_testkit::ports`).
pub fn free_ports(n: usize) -> Vec<u16> {
    warden_testkit::ports::free_ports(n).expect("free ports")
}

pub struct Member {
    /// Started with --join (not part of --initial-cluster).
    pub joined: bool,
    /// Extra flags for this member only.
    pub args: Vec<String>,
    pub name: String,
    pub client: String,
    pub peer: String,
    pub dir: PathBuf,
    pub child: Option<Child>,
}

pub struct Cluster {
    pub members: Vec<Member>,
    pub initial: String,
    /// Extra flags every member gets.
    pub extra: Vec<String>,
    /// How the harness reaches the client ports (TLS clusters).
    pub tls: Option<warden_client::TlsOptions>,
    /// Election timeout range of every member, in milliseconds.
    pub election_ms: (u64, u64),
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` members with short timeouts (election 300-600 ms, heartbeat 50 ms).
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, &[])
    }

    /// Like `start`, with extra server flags for every member.
    pub fn start_with(n: usize, extra: &[&str]) -> Cluster {
        let mut c = Self::stopped(n, extra);
        for i in 0..n {
            c.restart(i);
        }
        c
    }

    /// Like `start`, with elections after `min_ms`-`max_ms` of silence: for
    /// tests of heavy traffic whose subject is not fail-over, where a
    /// member starved of CPU by the other tests running beside it must not
    /// be taken for a dead one.
    pub fn start_patient(n: usize, min_ms: u64, max_ms: u64) -> Cluster {
        let mut c = Self::stopped(n, &[]);
        c.election_ms = (min_ms, max_ms);
        for i in 0..n {
            c.restart(i);
        }
        c
    }

    /// A cluster definition with ports and data dirs, nothing started.
    pub fn stopped(n: usize, extra: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ports = free_ports(2 * n);
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Member {
                joined: false,
                args: Vec::new(),
                name: format!("n{}", i + 1),
                client: format!("127.0.0.1:{}", ports[2 * i]),
                peer: format!("127.0.0.1:{}", ports[2 * i + 1]),
                dir: tmp.path().join(format!("n{}", i + 1)),
                child: None,
            });
        }
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        Cluster {
            members,
            initial,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls: None,
            election_ms: (300, 600),
            _tmp: tmp,
        }
    }

    /// (Re)starts member `i` on its data directory.
    pub fn restart(&mut self, i: usize) {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self._tmp.path().join(format!("{}.log", m.name)))
            .expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.arg("server")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.dir)
            .args(["--client-addr", &m.client])
            .args(["--peer-addr", &m.peer]);
        if !m.joined {
            cmd.args(["--initial-cluster", &self.initial]);
        } else if !m.dir.exists() {
            // First start: join through the original members.
            let others: Vec<String> = self
                .members
                .iter()
                .filter(|o| !o.joined)
                .map(|o| o.client.clone())
                .collect();
            cmd.args(["--join", &others.join(",")]);
        }
        let child = cmd
            .args(&self.extra)
            .args(&m.args)
            .args(["--election-timeout-min-ms", &self.election_ms.0.to_string()])
            .args(["--election-timeout-max-ms", &self.election_ms.1.to_string()])
            .args(["--heartbeat-interval-ms", "50"])
            .args(["--request-timeout-ms", "3000"])
            .env(
                "WARDEN_LOG",
                std::env::var("WARDEN_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn warden server");
        self.members[i].child = Some(child);
    }

    /// Adds a member that joins the running cluster with `--join`; returns
    /// its index.
    pub fn join(&mut self, name: &str) -> usize {
        let ports = free_ports(2);
        self.members.push(Member {
            joined: true,
            args: Vec::new(),
            name: name.to_string(),
            client: format!("127.0.0.1:{}", ports[0]),
            peer: format!("127.0.0.1:{}", ports[1]),
            dir: self._tmp.path().join(name),
            child: None,
        });
        let i = self.members.len() - 1;
        self.restart(i);
        i
    }

    /// SIGKILL member `i`.
    /// Waits (bounded) for member `i`'s process to exit by itself; its exit
    /// status, or `None` if it is still running at the deadline.
    pub async fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.members[i].child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.members[i].child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM member `i` (a graceful stop); see `wait_exit`.
    pub fn terminate(&mut self, i: usize) {
        if let Some(c) = &self.members[i].child {
            let status = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .expect("kill -TERM");
            assert!(status.success(), "kill -TERM: {status}");
        }
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(
            self._tmp
                .path()
                .join(format!("{}.log", self.members[i].name)),
        )
        .unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self._tmp.path()
    }

    /// Polls members' Status until the running ones agree on one leader;
    /// returns the index of the leader member.
    pub async fn wait_leader(&self, timeout: Duration) -> usize {
        let running: Vec<usize> = (0..self.members.len())
            .filter(|i| self.members[*i].child.is_some())
            .collect();
        let mut channels = Vec::new();
        for i in &running {
            channels.push(self.channel(*i));
        }
        let found = warden_testkit::poll::until(timeout, || {
            let channels = channels.clone();
            async move {
                let views = warden_testkit::leader::views(&channels, Duration::from_secs(2)).await;
                if views.iter().any(Option::is_none) {
                    return Err(format!("not every running member answered: {views:?}"));
                }
                warden_testkit::leader::agreed(&views).ok_or(format!("no agreed leader: {views:?}"))
            }
        })
        .await;
        match found {
            Ok(k) => running[k],
            Err(e) => panic!("{e}"),
        }
    }
}

/// Lines of each member's log shown when a test fails with a cluster up.
const LOG_LINES_ON_FAILURE: usize = 60;

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        // A failing test's cluster goes with its temporary directory: show
        // the end of each member's log, which is all CI keeps of it.
        if std::thread::panicking() {
            for i in 0..self.members.len() {
                let log = self.log(i);
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines.len().saturating_sub(LOG_LINES_ON_FAILURE);
                eprintln!(
                    "--- last {} lines of member {} ({}) ---",
                    lines.len() - tail,
                    i,
                    self.members[i].name
                );
                for l in lines.get(tail..).unwrap_or_default() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl Cluster {
    /// A channel to member `i`'s client port (over TLS if the cluster has
    /// `tls`).
    pub fn channel(&self, i: usize) -> Channel {
        match &self.tls {
            None => plain_channel(&self.members[i].client),
            Some(t) => tls_channel(&self.members[i].client, t),
        }
    }
}

/// A channel to `addr` over TLS with `tls`.
pub fn tls_channel(addr: &str, tls: &warden_client::TlsOptions) -> Channel {
    warden_client::tls::endpoint(addr, Some(tls))
        .expect("tls endpoint")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

fn plain_channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

pub async fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

pub async fn kv(addr: &str) -> KvClient<Channel> {
    KvClient::new(channel(addr).await)
}

pub async fn status(addr: &str) -> Result<pb::StatusResponse, tonic::Status> {
    let mut c = MaintenanceClient::new(channel(addr).await);
    c.status(pb::StatusRequest {}).await.map(|r| r.into_inner())
}

pub async fn put(addr: &str, key: &str, value: &str) -> Result<pb::PutResponse, tonic::Status> {
    kv(addr)
        .await
        .put(pb::PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// Linearizable (or serializable) get of one key's value.
pub async fn get(
    addr: &str,
    key: &str,
    serializable: bool,
) -> Result<Option<Vec<u8>>, tonic::Status> {
    let r = kv(addr)
        .await
        .range(pb::RangeRequest {
            key: key.into(),
            serializable,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.kvs.into_iter().next().map(|kv| kv.value))
}

/// All keys with `prefix` (linearizable).
pub async fn get_prefix(addr: &str, prefix: &str) -> Result<Vec<(String, String)>, tonic::Status> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let r = kv(addr)
        .await
        .range(pb::RangeRequest {
            key: prefix.into(),
            range_end: end,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect())
}

/// HashKV of one member at its current revision: (hash, revision).
pub async fn hash(addr: &str) -> Result<(u32, i64), String> {
    let r = MaintenanceClient::new(channel(addr).await)
        .hash_kv(pb::HashKvRequest { revision: 0 })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    Ok((r.hash, r.header.map_or(0, |h| h.revision)))
}

impl Cluster {
    /// Waits until every member answers HashKV with the same hash at the
    /// same revision (all members hold the same data).
    pub async fn converge(&self, timeout: Duration) {
        let all: Vec<String> = self.members.iter().map(|m| m.client.clone()).collect();
        eventually(timeout, || {
            let all = all.clone();
            async move {
                let mut hashes = Vec::new();
                for ep in &all {
                    hashes.push(hash(ep).await?);
                }
                if hashes.windows(2).all(|w| w[0] == w[1]) {
                    Ok(())
                } else {
                    Err(format!("members differ: {hashes:?}"))
                }
            }
        })
        .await;
    }
}

/// Retries `f` until it returns Ok; fails the test once the deadline passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    match warden_testkit::poll::until(timeout, f).await {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// Puts `key` = `value` through the member serving clients at `addr`
/// until a put succeeds, failing the test after `within` (a cluster that
/// must elect a leader or regain its quorum first).
pub async fn put_eventually(addr: &str, key: &str, value: &str, within: Duration) {
    eventually(within, || async move {
        put(addr, key, value)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
}

/// A `ForwardBatch` body as a member builds it: postcard's list of
/// (timeout in ms, byte string) pairs: a varint count, then for each a
/// varint timeout (100 ms here), a varint length and the bytes.
pub fn forward_batch_blob(items: &[Vec<u8>]) -> warden_proto::peer::Blob {
    fn varint(mut n: usize, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    let mut data = Vec::new();
    varint(items.len(), &mut data);
    for i in items {
        varint(100, &mut data);
        varint(i.len(), &mut data);
        data.extend_from_slice(i);
    }
    warden_proto::peer::Blob { data }
}

/// `msg` as a peer call from `member` of `cluster` (the identity metadata
/// every member sends with its peer calls).
pub fn as_member<T>(msg: T, cluster: u64, member: u64) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    let md = r.metadata_mut();
    md.insert(
        "warden-cluster-id",
        format!("{cluster:x}").parse().expect("hex"),
    );
    md.insert(
        "warden-member-id",
        format!("{member:x}").parse().expect("hex"),
    );
    r
}

/// (cluster id, member id, raft term) of the member serving clients at
/// `addr`, from Maintenance Status.
pub async fn ids(addr: &str) -> Result<(u64, u64, u64), tonic::Status> {
    let s = status(addr).await?;
    let h = s.header.unwrap_or_default();
    Ok((h.cluster_id, h.member_id, s.raft_term))
}

/// `METHOD path` over HTTP/1.1 with `headers`, as `curl` asks: (status
/// code, body).
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {raw:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((code, body.to_owned()))
}

/// `GET path` over HTTP/1.1: (status code, body).
/// The value of the unlabelled metric `name` on the member serving
/// clients at `addr` (its `/metrics` page).
pub fn metric(addr: &str, name: &str) -> f64 {
    let (code, page) = http_get(addr, "/metrics").expect("scrape /metrics");
    assert_eq!(code, 200, "{page}");
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{page}"))
}

pub fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    http_request(addr, "GET", path, &[])
}

/// Debian's `promtool` (package `prometheus`).
pub fn promtool() -> std::path::PathBuf {
    etcd::find_on_path("promtool")
        .expect("promtool not found: install Debian's `prometheus` package")
}

/// Runs promtool with `args`, `stdin` fed in; (exit code, what it said).
pub fn run_promtool(args: &[&str], stdin: &str) -> (Option<i32>, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(promtool())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), said)
}
