//! Client workloads: concurrent clients that drive the cluster through its
//! public gRPC API and record every operation in the history. Each client
//! runs one operation at a time with its own seeded random choices.
//!
//! Owns: what the clients send and how each answer becomes an outcome
//! (ok / fail / info). Never judges the results (that is `check`).

pub mod bank;
pub mod counter;
pub mod lock;
pub mod register;
pub mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;

use crate::history::{Call, Outcome, Recorder, Ret};
use warden_client::{Client, ClientError, ClientOptions};
use warden_proto::etcdserverpb::{ResponseHeader, TxnRequest, TxnResponse};

/// The keys and lock names the workloads use; all keys live under
/// [`keys::PREFIX`], which the watchers follow.
pub mod keys {
    pub const PREFIX: &str = "chaos/";
    pub const ACCOUNTS: &str = "chaos/bank/";

    pub fn register(i: usize) -> String {
        format!("chaos/reg/{i}")
    }
    pub fn account(i: u32) -> String {
        format!("{ACCOUNTS}{i:03}")
    }
    /// The account number of an account key.
    pub fn account_number(key: &[u8]) -> Option<u32> {
        std::str::from_utf8(key)
            .ok()?
            .strip_prefix(ACCOUNTS)?
            .parse()
            .ok()
    }
    pub fn lock(i: usize) -> String {
        format!("chaos-lock-{i}")
    }
    /// The counter guarded by lock `lock`.
    pub fn counter(lock: &str) -> String {
        format!("chaos/counter/{lock}")
    }
    /// Everything of the counter workload: counters and increment markers.
    pub const COUNTERS: &str = "chaos/ctr/";
    const COUNT: &str = "chaos/ctr/n/";
    const MARKER: &str = "chaos/ctr/op/";
    /// Counter `i` of the counter workload.
    pub fn count(i: u32) -> String {
        format!("{COUNT}{i}")
    }
    /// The marker increment `seq` of client `process` puts in its Txn.
    pub fn increment_marker(process: u32, seq: u64) -> String {
        format!("{MARKER}{process}/{seq}")
    }
    /// The counter number of a counter key.
    pub fn count_number(key: &[u8]) -> Option<u32> {
        std::str::from_utf8(key)
            .ok()?
            .strip_prefix(COUNT)?
            .parse()
            .ok()
    }
    /// (process, seq) of a marker key.
    pub fn marker_of(key: &[u8]) -> Option<(u32, u64)> {
        let rest = std::str::from_utf8(key).ok()?.strip_prefix(MARKER)?;
        let (p, s) = rest.split_once('/')?;
        Some((p.parse().ok()?, s.parse().ok()?))
    }
}

/// A deliberate client-side fault, to prove the checkers catch bugs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Register reads that should be linearizable are sent to a follower as
    /// serializable reads (what a server serving linearizable reads locally
    /// on followers would do).
    StaleReads,
    /// Every tenth acknowledged counter increment is sent once more as a
    /// new, untagged write (what a client retrying without exactly-once
    /// tags, or a server forgetting a session, would do).
    DuplicateIncrements,
}

impl Fault {
    pub fn parse(s: &str) -> anyhow::Result<Fault> {
        match s {
            "stale-reads" => Ok(Fault::StaleReads),
            "duplicate-increments" => Ok(Fault::DuplicateIncrements),
            other => anyhow::bail!(
                "unknown --fault {other:?}: expected stale-reads or duplicate-increments"
            ),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Fault::StaleReads => "stale-reads",
            Fault::DuplicateIncrements => "duplicate-increments",
        }
    }
}

/// What the harness knows about the members: names, addresses, one channel
/// each, member ids, and who leads (kept fresh by a poller).
pub struct Topology {
    pub names: Vec<String>,
    pub client_addrs: Vec<String>,
    /// One channel per member; they attach `token` when auth is on.
    pub channels: Vec<warden_client::AuthChannel>,
    /// The same members without a token, for `Status` (open to anyone).
    pub raw: Vec<tonic::transport::Channel>,
    /// The token the harness's own calls carry (empty without `--auth`).
    pub token: warden_client::auth::TokenCell,
    ids: RwLock<HashMap<u64, usize>>,
    leader: AtomicUsize,
}

const NO_LEADER: usize = usize::MAX;

impl Topology {
    pub fn new(
        names: Vec<String>,
        client_addrs: Vec<String>,
        tls: Option<warden_client::TlsOptions>,
    ) -> anyhow::Result<Topology> {
        let token = warden_client::auth::TokenCell::default();
        let raw = client_addrs
            .iter()
            .map(|a| {
                Ok(warden_client::tls::endpoint(a, tls.as_ref())?
                    .connect_timeout(Duration::from_millis(500))
                    .connect_lazy())
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let channels = raw
            .iter()
            .map(|ch| warden_client::auth::with_token(ch.clone(), token.clone()))
            .collect();
        Ok(Topology {
            names,
            client_addrs,
            channels,
            raw,
            token,
            ids: RwLock::new(HashMap::new()),
            leader: AtomicUsize::new(NO_LEADER),
        })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn learn_id(&self, id: u64, index: usize) {
        if let Ok(mut m) = self.ids.write() {
            m.insert(id, index);
        }
    }

    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.ids.read().ok()?.get(&id).copied()
    }

    /// The member's name for a response header's member id.
    pub fn name_of(&self, header: Option<&ResponseHeader>) -> Option<String> {
        let id = header?.member_id;
        Some(match self.index_of(id) {
            Some(i) => self.names.get(i)?.clone(),
            None => format!("{id:x}"),
        })
    }

    pub fn leader(&self) -> Option<usize> {
        let l = self.leader.load(Ordering::Relaxed);
        (l != NO_LEADER).then_some(l)
    }

    pub fn set_leader(&self, l: Option<usize>) {
        self.leader.store(l.unwrap_or(NO_LEADER), Ordering::Relaxed);
    }
}

/// Everything a client needs.
pub struct Ctx {
    pub rec: Recorder,
    pub topo: Arc<Topology>,
    pub opts: ClientOptions,
    /// Clients start no new operation after this.
    pub end: Instant,
    pub fault: Option<Fault>,
    pub seed: u64,
    /// Set when the harness wants the watchers to finish; the value is the
    /// revision they must reach first (0 = not yet known).
    pub watch_until: AtomicI64,
    pub watch_stop: AtomicBool,
}

impl Ctx {
    pub fn running(&self) -> bool {
        Instant::now() < self.end
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.topo.client_addrs, self.opts.clone()).await?)
    }

    /// Records an operation that succeeded with `ret`, answered by the
    /// member named in `header`.
    pub fn record_ok(
        &self,
        process: u32,
        invoke: u64,
        call: Call,
        ret: Ret,
        header: Option<&ResponseHeader>,
    ) {
        let member = self.topo.name_of(header);
        self.rec
            .record(process, invoke, call, Outcome::Ok, Some(ret), None, member);
    }

    /// Sends `req` as one txn, recorded as `call` (with whether its
    /// comparison held); its response, or `None` if it failed.
    pub async fn txn(
        &self,
        client: &Client,
        process: u32,
        call: Call,
        req: TxnRequest,
    ) -> Option<TxnResponse> {
        let invoke = self.rec.now();
        match client.txn(req).await {
            Ok(r) => {
                let ret = Ret::Txn {
                    succeeded: r.succeeded,
                    revision: revision_of(r.header.as_ref()),
                };
                self.record_ok(process, invoke, call, ret, r.header.as_ref());
                Some(r)
            }
            Err(e) => {
                self.record_err(process, invoke, call, &e);
                None
            }
        }
    }

    /// Records an operation that failed; whether it may have taken effect
    /// follows from the error (`outcome_of`).
    pub fn record_err(&self, process: u32, invoke: u64, call: Call, e: &ClientError) {
        self.rec.record(
            process,
            invoke,
            call,
            outcome_of(e),
            None,
            Some(e.to_string()),
            None,
        );
    }
}

/// A put of `key` = `value`, as a txn operation.
pub fn put_op(key: String, value: String) -> warden_proto::etcdserverpb::RequestOp {
    use warden_proto::etcdserverpb::{request_op, PutRequest, RequestOp};
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into_bytes(),
            value: value.into_bytes(),
            ..Default::default()
        })),
    }
}

/// Writes `keys` (key, value) once, recorded as `call` by the harness: a
/// txn that puts them all only if the first does not exist yet, so a retry
/// after an indeterminate attempt cannot reset them. Tried up to 20 times.
pub async fn create_once(
    ctx: &Ctx,
    call: &Call,
    keys: Vec<(String, String)>,
    what: &str,
) -> anyhow::Result<()> {
    use warden_proto::etcdserverpb::{compare, Compare};
    let first = keys.first().map(|(k, _)| k.clone()).unwrap_or_default();
    let client = ctx.client().await?;
    for _ in 0..20 {
        let req = TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Create as i32,
                key: first.clone().into_bytes(),
                range_end: Vec::new(),
                target_union: Some(compare::TargetUnion::CreateRevision(0)),
            }],
            success: keys
                .iter()
                .map(|(k, v)| put_op(k.clone(), v.clone()))
                .collect(),
            failure: Vec::new(),
        };
        if ctx
            .txn(&client, crate::history::HARNESS, call.clone(), req)
            .await
            .is_some()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("could not create the {what}")
}

/// The store revision a response header carries (0 without a header).
pub fn revision_of(header: Option<&ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision)
}

/// How a failed call ends: `Fail` when the request certainly did not take
/// effect (never sent, refused for lack of a leader before proposing, or a
/// definite answer), `Info` when it may have.
pub fn outcome_of(e: &ClientError) -> Outcome {
    match e {
        ClientError::NoEndpoints
        | ClientError::InvalidEndpoint { .. }
        | ClientError::Tls(_)
        | ClientError::InvalidOption(_) => Outcome::Fail,
        ClientError::SessionLost(_) => Outcome::Info,
        // The client only gives up this way on a write after every attempt
        // failed before sending or with "no leader" (one that may have been
        // applied ends in DeadlineExceeded).
        ClientError::Unavailable { .. } => Outcome::Fail,
        ClientError::DeadlineExceeded { .. } => Outcome::Info,
        // warden's exactly-once refusals: the session that knew the
        // request's outcome was forgotten.
        ClientError::Server { message, .. } if message.contains(MAY_HAVE_BEEN_APPLIED) => {
            Outcome::Info
        }
        ClientError::Server { code, .. } => outcome_of_code(*code),
    }
}

/// How warden ends the messages of `FailedPrecondition` refusals of a
/// tagged write whose earlier attempt may have been applied
/// (docs/exactly-once.md, "Errors").
const MAY_HAVE_BEEN_APPLIED: &str = "may or may not have been applied";

/// Outcome of a gRPC status code the server answered with.
pub fn outcome_of_code(code: Code) -> Outcome {
    match code {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Unknown
        | Code::Internal
        | Code::Cancelled
        | Code::Aborted
        | Code::DataLoss => Outcome::Info,
        _ => Outcome::Fail,
    }
}

/// Outcome of a status received directly from a channel.
pub fn outcome_of_status(s: &tonic::Status) -> Outcome {
    use warden_client::retry::{classify, Failure};
    match classify(s) {
        Failure::NotSent | Failure::NoLeader => Outcome::Fail,
        _ => outcome_of_code(s.code()),
    }
}

/// A request with a deadline.
pub fn with_timeout<M>(msg: M, timeout: Duration) -> tonic::Request<M> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// A short random pause between operations, so the history is not only
/// back-to-back requests.
pub async fn think(rng: &mut impl rand::Rng) {
    let ms = rng.random_range(0..20u64);
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_of_errors() {
        let server = |code| ClientError::Server {
            code,
            message: String::new(),
            endpoint: String::new(),
        };
        assert_eq!(outcome_of(&server(Code::Unavailable)), Outcome::Info);
        assert_eq!(outcome_of(&server(Code::FailedPrecondition)), Outcome::Fail);
        assert_eq!(outcome_of(&server(Code::NotFound)), Outcome::Fail);
        let expired = ClientError::Server {
            code: Code::FailedPrecondition,
            message: "warden: session expired; the request may or may not have been applied".into(),
            endpoint: String::new(),
        };
        assert_eq!(outcome_of(&expired), Outcome::Info);
        assert_eq!(
            outcome_of(&ClientError::DeadlineExceeded {
                timeout_ms: 1,
                endpoints: vec![]
            }),
            Outcome::Info
        );
        assert_eq!(
            outcome_of(&ClientError::Unavailable {
                code: Code::Unavailable,
                message: "etcdserver: no leader".into(),
                endpoints: vec![]
            }),
            Outcome::Fail
        );
        assert_eq!(
            outcome_of_status(&tonic::Status::unavailable("etcdserver: no leader")),
            Outcome::Fail
        );
        assert_eq!(
            outcome_of_status(&tonic::Status::unavailable("etcdserver: leader changed")),
            Outcome::Info
        );
    }

    #[test]
    fn account_keys_round_trip() {
        assert_eq!(keys::account(7), "chaos/bank/007");
        assert_eq!(keys::account_number(b"chaos/bank/007"), Some(7));
        assert_eq!(keys::account_number(b"chaos/reg/1"), None);
        assert!(keys::counter("l").starts_with(keys::PREFIX));
        assert!(keys::register(1).starts_with(keys::PREFIX));
        assert!(keys::count(2).starts_with(keys::COUNTERS));
        assert!(keys::COUNTERS.starts_with(keys::PREFIX));
        assert_eq!(keys::count_number(keys::count(2).as_bytes()), Some(2));
        let m = keys::increment_marker(4, 17);
        assert!(m.starts_with(keys::COUNTERS));
        assert_eq!(keys::marker_of(m.as_bytes()), Some((4, 17)));
        assert_eq!(keys::marker_of(keys::count(2).as_bytes()), None);
        assert_eq!(keys::count_number(m.as_bytes()), None);
    }
}
