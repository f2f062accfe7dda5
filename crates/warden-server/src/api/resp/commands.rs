//! What each RESP command does, on one connection's [`Session`], in terms
//! of the `Node` API the etcd services use: reads through `read_kv` at the
//! session's consistency (linearizable unless `READONLY`), writes through
//! `api::propose` (forwarded to the leader by the node, checked by auth
//! when proposed and again when applied).
//!
//! Atomicity: a command is one Raft proposal. Read-modify-write commands
//! (INCR, APPEND) read the key and propose a txn that compares its value
//! with what was read (and, nested, with what concurrent clients would
//! have made of it) before writing, falling over to a range of the key and
//! a retry on a miss (see `rmw`); conditional writes (SET NX/XX, SETNX,
//! MSETNX) are a txn with a compare on the create revision; multi-key
//! writes are one txn. TTLs are etcd leases, one per key set with EX/PX
//! (see `ttl`).
//!
//! Must never: answer a default read without the node's linearizable read,
//! write the result of a read-modify-write without a compare on the value
//! it was computed from, or let a
//! reply carry a CR or LF in a simple string or error line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::{Code, Status};

use super::codec::Reply;
use super::glob;
use super::server::Shared;
use crate::api::auth::Caller;
use crate::api::{propose, Proposal};
use crate::node::{Consistency, NodeError};
use warden_core::state::lease::MAX_LEASE_TTL;
use warden_core::state::types::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue, PutRequest, RangeRequest,
    RequestOp, ResponseOp, TxnRequest, TxnResponse,
};
use warden_core::state::validate::{self, MAX_TXN_OPS};
use warden_core::state::{Command, CommandResult, StateError};

/// Attempts of a read-modify-write before it gives up under contention.
pub(super) const MAX_CAS_ATTEMPTS: usize = 64;

/// Values a read-modify-write guesses the key may have (see `rmw`).
const RMW_GUESSES: usize = 8;

/// Most keys KEYS looks at (it answers in one reply; SCAN pages).
pub const KEYS_MAX: i64 = 100_000;

/// Most value bytes one MGET answers with.
const MGET_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Most commands queued between MULTI and EXEC.
const MULTI_MAX: usize = MAX_TXN_OPS;

/// The version warden claims to speak (what clients check features by).
pub const REDIS_VERSION: &str = "7.0.0";

/// What the connection does after a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    Close,
}

/// A failed command's error reply.
type Res = Result<Reply, Reply>;

fn wrong_args(name: &str) -> Reply {
    Reply::err(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

fn syntax() -> Reply {
    Reply::err("ERR syntax error")
}

pub(super) fn not_integer() -> Reply {
    Reply::err("ERR value is not an integer or out of range")
}

/// A gRPC status (what the shared API helpers return) as a RESP error.
pub fn status_reply(s: Status) -> Reply {
    let code = match s.code() {
        Code::PermissionDenied => "NOPERM",
        Code::Unauthenticated => "NOAUTH",
        _ => "ERR",
    };
    Reply::err(format!("{code} {}", s.message()))
}

fn proposal_reply(p: Proposal) -> Reply {
    status_reply(p.into())
}

fn node_reply(e: NodeError) -> Reply {
    status_reply(crate::api::error::node_status(e))
}

fn state_reply(e: StateError) -> Reply {
    status_reply(crate::api::error::state_status(e))
}

pub(super) fn parse_i64(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?;
    // Redis refuses "+1", " 1", "01": only canonical integers.
    if s.starts_with('+') || (s.len() > 1 && (s.starts_with('0') || s.starts_with("-0"))) {
        return None;
    }
    s.parse().ok()
}

pub(super) fn int_arg(b: &[u8]) -> Result<i64, Reply> {
    parse_i64(b).ok_or_else(not_integer)
}

pub(super) fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The lease TTL (whole seconds, rounded up so a key never expires before
/// it was asked to) for an expiry of `ms` milliseconds.
fn lease_secs(ms: i64) -> i64 {
    ms.saturating_add(999) / 1000
}

fn range_end_for_prefix(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (vec![0], vec![0]);
    }
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (prefix.to_vec(), end);
        }
    }
    (prefix.to_vec(), vec![0])
}

fn cmp(target: CompareTarget, result: CompareResult, key: &[u8]) -> Compare {
    Compare {
        result,
        target,
        key: key.to_vec(),
        range_end: Vec::new(),
    }
}

/// The key does not exist (its create revision is 0).
pub(super) fn absent(key: &[u8]) -> Compare {
    cmp(CompareTarget::CreateRevision(0), CompareResult::Equal, key)
}

/// The key exists.
fn present(key: &[u8]) -> Compare {
    cmp(
        CompareTarget::CreateRevision(0),
        CompareResult::Greater,
        key,
    )
}

/// The key is exactly as read: its mod revision (0 if it was absent).
pub(super) fn unchanged(key: &[u8], kv: Option<&KeyValue>) -> Compare {
    cmp(
        CompareTarget::ModRevision(kv.map_or(0, |k| k.mod_revision)),
        CompareResult::Equal,
        key,
    )
}

pub(super) fn put_op(key: &[u8], value: Vec<u8>, lease: i64, prev_kv: bool) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: key.to_vec(),
        value,
        lease,
        prev_kv,
        ignore_value: false,
        ignore_lease: false,
    })
}

fn get_op(key: &[u8]) -> RequestOp {
    RequestOp::Range(RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    })
}

pub(super) fn del_op(key: &[u8], prev_kv: bool) -> RequestOp {
    RequestOp::DeleteRange(DeleteRangeRequest {
        key: key.to_vec(),
        range_end: Vec::new(),
        prev_kv,
    })
}

/// A put that keeps the key's lease if it has one (KEEPTTL; INCR and
/// APPEND keep the TTL too): etcd's `ignore_lease` refuses a missing key,
/// so a nested txn picks it only when the key exists.
pub(super) fn put_keep_ttl(key: &[u8], value: Vec<u8>, prev_kv: bool) -> RequestOp {
    RequestOp::Txn(TxnRequest {
        compare: vec![present(key)],
        success: vec![RequestOp::Put(PutRequest {
            key: key.to_vec(),
            value: value.clone(),
            lease: 0,
            prev_kv,
            ignore_value: false,
            ignore_lease: true,
        })],
        failure: vec![put_op(key, value, 0, prev_kv)],
    })
}

/// The previous value a put (plain or `put_keep_ttl`) reported.
fn prev_of(r: Option<&ResponseOp>) -> Option<KeyValue> {
    match r? {
        ResponseOp::Put(p) => p.prev_kv.clone(),
        ResponseOp::Txn(t) => prev_of(t.responses.first()),
        _ => None,
    }
}

fn first_kv(r: Option<&ResponseOp>) -> Option<KeyValue> {
    match r? {
        ResponseOp::Range(r) => r.kvs.first().cloned(),
        _ => None,
    }
}

/// Expiry options shared by SET and friends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expiry {
    /// No TTL (clears one the key had).
    None,
    /// Keep the key's TTL.
    Keep,
    /// Expire in this many milliseconds.
    In(i64),
}

/// One connection's state.
pub struct Session {
    shared: Arc<Shared>,
    peer: SocketAddr,
    id: u64,
    name: Option<Vec<u8>>,
    proto: u8,
    caller: Caller,
    readonly: bool,
    /// WATCHed keys and their mod revision when watched.
    watched: Vec<(Vec<u8>, i64)>,
    /// Commands queued since MULTI.
    multi: Option<Vec<Vec<Vec<u8>>>>,
    /// A command queued since MULTI was refused: EXEC aborts.
    multi_failed: bool,
}

impl Session {
    pub fn new(shared: Arc<Shared>, peer: SocketAddr, id: u64) -> Session {
        Session {
            shared,
            peer,
            id,
            name: None,
            proto: 2,
            caller: Caller(None),
            readonly: false,
            watched: Vec::new(),
            multi: None,
            multi_failed: false,
        }
    }

    /// The most bytes one request (one Raft transaction) may carry.
    pub(super) fn max_request_bytes(&self) -> usize {
        self.shared.max_request_bytes
    }

    /// The protocol replies are encoded in (2 or 3, see HELLO).
    pub fn proto(&self) -> u8 {
        self.proto
    }

    fn consistency(&self) -> Consistency {
        if self.readonly {
            Consistency::Serializable
        } else {
            Consistency::Linearizable
        }
    }

    fn deadline(&self) -> tokio::time::Instant {
        self.shared.node.deadline(None)
    }

    fn auth_enabled(&self) -> bool {
        self.shared
            .node
            .with_state(|d| d.auth.enabled())
            .unwrap_or(false)
    }

    /// Runs one request.
    pub async fn run(&mut self, args: Vec<Vec<u8>>) -> (Reply, Outcome) {
        let Some(first) = args.first() else {
            return (Reply::err("ERR empty command"), Outcome::Continue);
        };
        let name = upper(first);
        let Some(spec) = super::table::find(&name) else {
            if self.multi.is_some() {
                self.multi_failed = true;
            }
            return (unknown_command(&args), Outcome::Continue);
        };
        if !spec.arity_ok(args.len()) {
            if self.multi.is_some() {
                self.multi_failed = true;
            }
            return (wrong_args(&name), Outcome::Continue);
        }
        if name == "QUIT" {
            return (Reply::ok(), Outcome::Close);
        }
        let open = matches!(name.as_str(), "AUTH" | "HELLO");
        if !open && self.caller.user().is_none() && self.auth_enabled() {
            if self.multi.is_some() {
                self.multi_failed = true;
            }
            return (
                Reply::err("NOAUTH Authentication required."),
                Outcome::Continue,
            );
        }
        if let Some(queue) = &mut self.multi {
            if !matches!(
                name.as_str(),
                "EXEC" | "DISCARD" | "MULTI" | "WATCH" | "QUIT" | "RESET"
            ) {
                if !super::transaction::queueable(&name) {
                    self.multi_failed = true;
                    return (
                        Reply::err(format!(
                            "ERR warden: {name} is not supported inside MULTI (EXEC runs the \
                             queued commands as one compare-and-swap Raft transaction; see docs/resp.md)"
                        )),
                        Outcome::Continue,
                    );
                }
                if queue.len() >= MULTI_MAX {
                    self.multi_failed = true;
                    return (
                        Reply::err(format!(
                            "ERR warden: at most {MULTI_MAX} commands between MULTI and EXEC"
                        )),
                        Outcome::Continue,
                    );
                }
                // EXEC proposes the queue as one transaction, which may
                // carry no more than a gRPC request: the queue's bytes are
                // bounded by that too (and so is what a connection holds).
                let max = self.shared.max_request_bytes;
                let queued = queue.iter().flatten().map(Vec::len).sum::<usize>();
                if queued.saturating_add(args.iter().map(Vec::len).sum()) > max {
                    self.multi_failed = true;
                    return (
                        Reply::err(format!(
                            "ERR warden: the commands queued since MULTI would exceed {max} \
                             bytes, the most one transaction may carry (--max-request-bytes)"
                        )),
                        Outcome::Continue,
                    );
                }
                queue.push(args);
                return (Reply::Simple("QUEUED".into()), Outcome::Continue);
            }
        }
        let reply = match self.dispatch(&name, &args).await {
            Ok(r) | Err(r) => r,
        };
        (reply, Outcome::Continue)
    }

    async fn dispatch(&mut self, name: &str, a: &[Vec<u8>]) -> Res {
        let arg = |i: usize| a.get(i).map(Vec::as_slice).unwrap_or_default();
        match name {
            "PING" => match a.len() {
                1 => Ok(Reply::Simple("PONG".into())),
                _ => Ok(Reply::bulk(arg(1))),
            },
            "ECHO" => Ok(Reply::bulk(arg(1))),
            "GET" => Ok(Reply::opt(self.get(arg(1)).await?.map(|kv| kv.value))),
            "STRLEN" => Ok(Reply::Integer(
                self.get(arg(1))
                    .await?
                    .map_or(0, |kv| kv.value.len() as i64),
            )),
            "TYPE" => Ok(Reply::Simple(
                if self.get(arg(1)).await?.is_some() {
                    "string"
                } else {
                    "none"
                }
                .into(),
            )),
            "EXISTS" => self.exists(&a[1..]).await,
            "MGET" => self.mget(&a[1..]).await,
            "SET" => self.set_command(a).await,
            "SETNX" => {
                let r = self
                    .set(arg(1), arg(2).to_vec(), Cond::Nx, false, Expiry::None)
                    .await?;
                Ok(Reply::Integer(i64::from(r.0)))
            }
            "SETEX" | "PSETEX" => {
                let n = int_arg(arg(2))?;
                let ms = if name == "SETEX" {
                    n.checked_mul(1000)
                } else {
                    Some(n)
                };
                let ms = ms.filter(|m| *m > 0).ok_or_else(|| {
                    Reply::err(format!(
                        "ERR invalid expire time in '{}' command",
                        name.to_ascii_lowercase()
                    ))
                })?;
                self.set(arg(1), arg(3).to_vec(), Cond::None, false, Expiry::In(ms))
                    .await?;
                Ok(Reply::ok())
            }
            "GETSET" => {
                let (_, prev) = self
                    .set(arg(1), arg(2).to_vec(), Cond::None, true, Expiry::None)
                    .await?;
                Ok(Reply::opt(prev.map(|kv| kv.value)))
            }
            "GETDEL" => self.getdel(arg(1)).await,
            "DEL" | "UNLINK" => self.del(&a[1..]).await,
            "MSET" => self.mset(&a[1..], false).await,
            "MSETNX" => self.mset(&a[1..], true).await,
            "INCR" => self.incr(arg(1), 1).await,
            "DECR" => self.incr(arg(1), -1).await,
            "INCRBY" => self.incr(arg(1), int_arg(arg(2))?).await,
            "DECRBY" => {
                let by = int_arg(arg(2))?
                    .checked_neg()
                    .ok_or_else(|| Reply::err("ERR decrement would overflow"))?;
                self.incr(arg(1), by).await
            }
            "APPEND" => self.append(arg(1), arg(2)).await,
            "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => self.expire(name, a).await,
            "TTL" => self.ttl(arg(1), false).await,
            "PTTL" => self.ttl(arg(1), true).await,
            "PERSIST" => self.persist(arg(1)).await,
            "KEYS" => self.keys(arg(1)).await,
            "SCAN" => self.scan(a).await,
            "DBSIZE" => self.dbsize().await,
            "INFO" => self.info(a).await,
            "CLIENT" => self.client(a),
            "COMMAND" => Ok(super::table::command(a, self.proto)),
            "HELLO" => self.hello(a).await,
            "AUTH" => self.auth(a).await,
            "SELECT" => match parse_i64(arg(1)) {
                Some(0) => Ok(Reply::ok()),
                Some(_) => Err(Reply::err("ERR DB index is out of range")),
                None => Err(not_integer()),
            },
            "READONLY" => {
                self.readonly = true;
                Ok(Reply::ok())
            }
            "READWRITE" => {
                self.readonly = false;
                Ok(Reply::ok())
            }
            "FLUSHDB" | "FLUSHALL" => Err(Reply::err(format!(
                "ERR warden: {name} is refused: the key space is etcd's, shared with every \
                 other client of the cluster, and one call would delete all of it; delete a \
                 prefix you own instead (etcdctl del --prefix PREFIX)"
            ))),
            "TIME" => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                Ok(Reply::Array(vec![
                    Reply::bulk(now.as_secs().to_string()),
                    Reply::bulk(now.subsec_micros().to_string()),
                ]))
            }
            "CONFIG" => match upper(arg(1)).as_str() {
                // redis-benchmark and some clients read settings at start:
                // warden has none of Redis's, so every pattern matches none.
                "GET" => Ok(Reply::Map(Vec::new())),
                "RESETSTAT" => Ok(Reply::ok()),
                other => Err(Reply::err(format!(
                    "ERR warden: CONFIG {other} is not supported (configure warden with its flags)"
                ))),
            },
            "WATCH" => self.watch(&a[1..]).await,
            "UNWATCH" => {
                self.watched.clear();
                Ok(Reply::ok())
            }
            "MULTI" => {
                if self.multi.is_some() {
                    return Err(Reply::err("ERR MULTI calls can not be nested"));
                }
                self.multi = Some(Vec::new());
                self.multi_failed = false;
                Ok(Reply::ok())
            }
            "DISCARD" => {
                if self.multi.take().is_none() {
                    return Err(Reply::err("ERR DISCARD without MULTI"));
                }
                self.watched.clear();
                Ok(Reply::ok())
            }
            "EXEC" => self.exec().await,
            "RESET" => {
                self.multi = None;
                self.watched.clear();
                self.readonly = false;
                self.proto = 2;
                self.name = None;
                self.caller = Caller(None);
                Ok(Reply::Simple("RESET".into()))
            }
            other => Err(Reply::err(format!(
                "ERR warden: '{}' is listed but not implemented",
                other.to_ascii_lowercase()
            ))),
        }
    }

    // ---- reads ---------------------------------------------------------

    fn check_read(&self, key: &[u8], range_end: &[u8]) -> Result<(), Reply> {
        if key.is_empty() {
            return Err(empty_key());
        }
        crate::api::auth::check_range_at(&self.shared.node, &self.caller, key, range_end)
            .map_err(status_reply)
    }

    /// One key at the session's consistency.
    pub(super) async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, Reply> {
        let mut got = self.get_many(&[key.to_vec()]).await?;
        Ok(got.pop().flatten())
    }

    /// Several keys from one state (one read: a consistent view).
    pub(super) async fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<KeyValue>>, Reply> {
        for k in keys {
            self.check_read(k, &[])?;
        }
        let keys = keys.to_vec();
        self.shared
            .node
            .read_kv(self.consistency(), self.deadline(), false, move |m| {
                m.get_many(&keys)
            })
            .await
            .map_err(node_reply)?
            .map_err(state_reply)
    }

    /// One key, linearizably whatever the session's mode.
    async fn get_linearizable(&self, key: &[u8]) -> Result<Option<KeyValue>, Reply> {
        let k = key.to_vec();
        self.shared
            .node
            .read_kv(
                Consistency::Linearizable,
                self.deadline(),
                false,
                move |m| m.get(&k),
            )
            .await
            .map_err(node_reply)?
            .map_err(state_reply)
    }

    async fn exists(&self, keys: &[Vec<u8>]) -> Res {
        for k in keys {
            self.check_read(k, &[])?;
        }
        let keys = keys.to_vec();
        // Whether each key is there: no value to read back.
        let n = self
            .shared
            .node
            .read_kv(self.consistency(), self.deadline(), false, move |m| {
                keys.iter().filter(|k| m.get_meta(k).is_some()).count()
            })
            .await
            .map_err(node_reply)?;
        Ok(Reply::Integer(n as i64))
    }

    async fn mget(&self, keys: &[Vec<u8>]) -> Res {
        let got = self.get_many(keys).await?;
        let bytes: usize = got.iter().flatten().map(|kv| kv.value.len()).sum();
        if bytes > MGET_MAX_BYTES {
            return Err(Reply::err(format!(
                "ERR warden: MGET would answer {bytes} bytes, over the limit of {MGET_MAX_BYTES}"
            )));
        }
        Ok(Reply::Array(
            got.into_iter()
                .map(|kv| Reply::opt(kv.map(|k| k.value)))
                .collect(),
        ))
    }

    // ---- writes --------------------------------------------------------

    pub(super) async fn propose(&self, cmd: Command) -> Result<(i64, CommandResult), Reply> {
        propose(&self.shared.node, None, &self.caller, cmd)
            .await
            .map_err(proposal_reply)
    }

    pub(super) async fn txn(&self, t: TxnRequest) -> Result<TxnResponse, Reply> {
        validate::check_txn_request(&t).map_err(state_reply)?;
        match self.propose(Command::Txn(t)).await? {
            (_, CommandResult::Txn(r)) => Ok(r),
            _ => Err(Reply::err(
                "ERR warden: state machine answered the wrong kind",
            )),
        }
    }

    /// Grants a lease for an expiry of `ms` milliseconds; its id.
    pub(super) async fn grant(&self, ms: i64) -> Result<i64, Reply> {
        let secs = lease_secs(ms);
        if secs > MAX_LEASE_TTL {
            return Err(Reply::err("ERR invalid expire time"));
        }
        let (_, id, _) = crate::api::lease::grant(&self.shared.node, &self.caller, 0, secs, None)
            .await
            .map_err(status_reply)?;
        Ok(id)
    }

    /// Revokes a lease this session granted that no key ended up on (a
    /// conditional write that did not apply), in the background: nothing
    /// is attached to it, so this only saves the lessor a countdown.
    pub(super) fn drop_lease(&self, id: i64) {
        let node = self.shared.node.clone();
        let caller = self.caller.clone();
        tokio::spawn(async move {
            if let Err(e) = propose(&node, None, &caller, Command::LeaseRevoke { id }).await {
                let s: Status = e.into();
                tracing::debug!(
                    lease = id,
                    "resp: revoking an unused lease: {}",
                    s.message()
                );
            }
        });
    }

    /// The lease id for `expiry` (granting one if it asks for a TTL).
    async fn lease_for(&self, expiry: Expiry) -> Result<i64, Reply> {
        match expiry {
            Expiry::In(ms) => self.grant(ms).await,
            Expiry::None | Expiry::Keep => Ok(0),
        }
    }

    /// SET with its options: returns whether it wrote, and the previous
    /// value if `want_prev` (the current one when a condition failed).
    async fn set(
        &self,
        key: &[u8],
        value: Vec<u8>,
        cond: Cond,
        want_prev: bool,
        expiry: Expiry,
    ) -> Result<(bool, Option<KeyValue>), Reply> {
        if key.is_empty() {
            return Err(empty_key());
        }
        if want_prev {
            self.check_read(key, &[])?;
        }
        let lease = self.lease_for(expiry).await?;
        let put = if expiry == Expiry::Keep {
            put_keep_ttl(key, value, want_prev)
        } else {
            put_op(key, value, lease, want_prev)
        };
        let compare = match cond {
            Cond::None => Vec::new(),
            Cond::Nx => vec![absent(key)],
            Cond::Xx => vec![present(key)],
        };
        let failure = if want_prev {
            vec![get_op(key)]
        } else {
            Vec::new()
        };
        let t = TxnRequest {
            compare,
            success: vec![put],
            failure,
        };
        let r = match self.txn(t).await {
            Ok(r) => r,
            Err(e) => {
                if lease != 0 {
                    self.drop_lease(lease);
                }
                return Err(e);
            }
        };
        if r.succeeded {
            Ok((true, prev_of(r.responses.first())))
        } else {
            if lease != 0 {
                self.drop_lease(lease);
            }
            Ok((false, first_kv(r.responses.first())))
        }
    }

    async fn set_command(&self, a: &[Vec<u8>]) -> Res {
        let (cond, get, expiry) = set_options(a)?;
        let (wrote, prev) = self.set(&a[1], a[2].clone(), cond, get, expiry).await?;
        if get {
            return Ok(Reply::opt(prev.map(|kv| kv.value)));
        }
        Ok(if wrote { Reply::ok() } else { Reply::Nil })
    }

    async fn getdel(&self, key: &[u8]) -> Res {
        self.check_read(key, &[])?;
        let cmd = Command::DeleteRange(DeleteRangeRequest {
            key: key.to_vec(),
            range_end: Vec::new(),
            prev_kv: true,
        });
        match self.propose(cmd).await? {
            (_, CommandResult::DeleteRange(d)) => {
                Ok(Reply::opt(d.prev_kvs.into_iter().next().map(|kv| kv.value)))
            }
            _ => Err(Reply::err(
                "ERR warden: state machine answered the wrong kind",
            )),
        }
    }

    async fn del(&self, keys: &[Vec<u8>]) -> Res {
        let keys = unique(keys.iter().cloned());
        if keys.iter().any(Vec::is_empty) {
            return Err(empty_key());
        }
        too_many(keys.len())?;
        let t = TxnRequest {
            compare: Vec::new(),
            success: keys.iter().map(|k| del_op(k, false)).collect(),
            failure: Vec::new(),
        };
        let r = self.txn(t).await?;
        let n = r
            .responses
            .iter()
            .map(|r| match r {
                ResponseOp::DeleteRange(d) => d.deleted,
                _ => 0,
            })
            .sum();
        Ok(Reply::Integer(n))
    }

    async fn mset(&self, kv: &[Vec<u8>], nx: bool) -> Res {
        if kv.is_empty() || !kv.len().is_multiple_of(2) {
            return Err(wrong_args(if nx { "msetnx" } else { "mset" }));
        }
        // Redis lets a later pair win; a txn may put a key only once.
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for p in kv.chunks(2) {
            let (k, v) = (p[0].clone(), p[1].clone());
            if k.is_empty() {
                return Err(empty_key());
            }
            match pairs.iter_mut().find(|(x, _)| *x == k) {
                Some(slot) => slot.1 = v,
                None => pairs.push((k, v)),
            }
        }
        too_many(pairs.len())?;
        let t = TxnRequest {
            compare: if nx {
                pairs.iter().map(|(k, _)| absent(k)).collect()
            } else {
                Vec::new()
            },
            success: pairs
                .iter()
                .map(|(k, v)| put_op(k, v.clone(), 0, false))
                .collect(),
            failure: Vec::new(),
        };
        let r = self.txn(t).await?;
        Ok(if nx {
            Reply::Integer(i64::from(r.succeeded))
        } else {
            Reply::ok()
        })
    }

    /// Read-modify-write of one key: `f` maps the current value (if any)
    /// to the new one, and must depend on nothing else (INCR, APPEND).
    ///
    /// Proposed as one txn that compares the key's *value* with what was
    /// read (a pure `f` makes a value compare exact: whatever happened to
    /// the key before, writing `f(v)` over `v` is what the command would
    /// have done at that point), falling through nested txns to the values
    /// the key would have if other clients had run the same command
    /// meanwhile (`f(v)`, `f(f(v))`, ... up to [`RMW_GUESSES`]), and at the
    /// bottom to a range of the key. So a counter INCRed from many members
    /// at once succeeds in one round nearly always, instead of the members
    /// nearest the leader starving the others; on a miss it retries with the
    /// value read back.
    async fn rmw(
        &self,
        key: &[u8],
        f: impl Fn(Option<&[u8]>) -> Result<Vec<u8>, Reply>,
    ) -> Result<Vec<u8>, Reply> {
        self.check_read(key, &[])?;
        let _turn = self.shared.rmw_lock(key).await;
        // A first guess from this member's state: the compare decides, and
        // a stale guess costs one more round.
        let mut cur: Option<Vec<u8>> = {
            let key = key.to_vec();
            self.shared
                .node
                .with_state(move |d| d.kv.mvcc().get(&key).map(|kv| kv.map(|kv| kv.value)))
                .map_err(node_reply)?
                .map_err(state_reply)?
        };
        for attempt in 0..MAX_CAS_ATTEMPTS {
            if attempt > 0 {
                backoff(attempt).await;
            }
            // (value the key may have, value to write over it)
            let mut levels: Vec<(Option<Vec<u8>>, Vec<u8>)> = Vec::new();
            let first = match f(cur.as_deref()) {
                Ok(v) => v,
                // The first guess came from this member's state, which may
                // be behind: refuse only what a linearizable read confirms.
                Err(_) if attempt == 0 => {
                    cur = self.get_linearizable(key).await?.map(|kv| kv.value);
                    f(cur.as_deref())?
                }
                Err(e) => return Err(e),
            };
            let mut bytes = cur.as_ref().map_or(0, Vec::len) + first.len();
            levels.push((cur.clone(), first));
            while levels.len() < RMW_GUESSES {
                let Some((_, prev)) = levels.last() else {
                    break;
                };
                let Ok(next) = f(Some(prev)) else { break };
                bytes = bytes.saturating_add(prev.len() + next.len());
                if bytes > self.shared.max_request_bytes {
                    break;
                }
                let guess = prev.clone();
                levels.push((Some(guess), next));
            }
            let level = |(have, new): &(Option<Vec<u8>>, Vec<u8>), failure| TxnRequest {
                compare: vec![match have {
                    None => absent(key),
                    Some(v) => cmp(CompareTarget::Value(v.clone()), CompareResult::Equal, key),
                }],
                success: vec![RequestOp::Put(PutRequest {
                    key: key.to_vec(),
                    value: new.clone(),
                    lease: 0,
                    prev_kv: false,
                    ignore_value: false,
                    // The TTL stays (Redis keeps it on INCR and APPEND); the
                    // compare guarantees the key exists when it has one.
                    ignore_lease: have.is_some(),
                })],
                failure,
            };
            let mut failure = vec![get_op(key)];
            for l in levels.iter().skip(1).rev() {
                failure = vec![RequestOp::Txn(level(l, failure))];
            }
            let mut r = self.txn(level(&levels[0], failure)).await?;
            for (_, new) in &levels {
                if r.succeeded {
                    return Ok(new.clone());
                }
                match r.responses.into_iter().next() {
                    Some(ResponseOp::Txn(t)) => r = t,
                    Some(ResponseOp::Range(got)) => {
                        cur = got.kvs.into_iter().next().map(|kv| kv.value);
                        break;
                    }
                    _ => {
                        return Err(Reply::err(
                            "ERR warden: state machine answered the wrong kind",
                        ))
                    }
                }
            }
        }
        Err(Reply::err(format!(
            "ERR warden: the key changed under {MAX_CAS_ATTEMPTS} attempts in a row; try again"
        )))
    }

    async fn incr(&self, key: &[u8], by: i64) -> Res {
        let new = self
            .rmw(key, |cur| {
                let old = match cur {
                    None => 0,
                    Some(v) => parse_i64(v).ok_or_else(not_integer)?,
                };
                let n = old
                    .checked_add(by)
                    .ok_or_else(|| Reply::err("ERR increment or decrement would overflow"))?;
                Ok(n.to_string().into_bytes())
            })
            .await?;
        Ok(Reply::Integer(parse_i64(&new).ok_or_else(not_integer)?))
    }

    async fn append(&self, key: &[u8], suffix: &[u8]) -> Res {
        let max = self.shared.max_request_bytes;
        let new = self
            .rmw(key, |cur| {
                let mut v = cur.map(<[u8]>::to_vec).unwrap_or_default();
                if v.len().saturating_add(suffix.len()) > max {
                    return Err(Reply::err(format!(
                        "ERR warden: the value would exceed the request limit of {max} bytes"
                    )));
                }
                v.extend_from_slice(suffix);
                Ok(v)
            })
            .await?;
        Ok(Reply::Integer(new.len() as i64))
    }

    // ---- TTLs ----------------------------------------------------------

    async fn expire(&self, name: &str, a: &[Vec<u8>]) -> Res {
        if a.len() > 3 {
            return Err(Reply::err(format!(
                "ERR warden: {name} options (NX XX GT LT) are not supported"
            )));
        }
        let key = &a[1];
        let n = int_arg(&a[2])?;
        let ms = match name {
            "EXPIRE" => n.checked_mul(1000),
            "PEXPIRE" => Some(n),
            "EXPIREAT" => n.checked_mul(1000).map(|t| t.saturating_sub(now_ms())),
            _ => Some(n.saturating_sub(now_ms())),
        }
        .ok_or_else(|| {
            Reply::err(format!(
                "ERR invalid expire time in '{}' command",
                name.to_ascii_lowercase()
            ))
        })?;
        if key.is_empty() {
            return Err(empty_key());
        }
        if ms <= 0 {
            // Redis deletes a key given an expiry in the past.
            let r = self.del(std::slice::from_ref(key)).await?;
            return Ok(r);
        }
        let lease = self.grant(ms).await?;
        let t = TxnRequest {
            compare: vec![present(key)],
            success: vec![RequestOp::Put(PutRequest {
                key: key.clone(),
                value: Vec::new(),
                lease,
                prev_kv: false,
                ignore_value: true,
                ignore_lease: false,
            })],
            failure: Vec::new(),
        };
        let r = match self.txn(t).await {
            Ok(r) => r,
            Err(e) => {
                self.drop_lease(lease);
                return Err(e);
            }
        };
        if !r.succeeded {
            self.drop_lease(lease);
        }
        Ok(Reply::Integer(i64::from(r.succeeded)))
    }

    async fn persist(&self, key: &[u8]) -> Res {
        if key.is_empty() {
            return Err(empty_key());
        }
        let t = TxnRequest {
            compare: vec![cmp(CompareTarget::Lease(0), CompareResult::NotEqual, key)],
            success: vec![RequestOp::Put(PutRequest {
                key: key.to_vec(),
                value: Vec::new(),
                lease: 0,
                prev_kv: false,
                ignore_value: true,
                ignore_lease: false,
            })],
            failure: Vec::new(),
        };
        let r = self.txn(t).await?;
        Ok(Reply::Integer(i64::from(r.succeeded)))
    }

    /// TTL / PTTL: -2 no key, -1 no TTL, else the lease's remaining time
    /// as the leader's lessor counts it (whole seconds).
    async fn ttl(&self, key: &[u8], millis: bool) -> Res {
        let Some(kv) = self.get(key).await? else {
            return Ok(Reply::Integer(-2));
        };
        if kv.lease == 0 {
            return Ok(Reply::Integer(-1));
        }
        let t = self
            .shared
            .node
            .lease_time_to_live(kv.lease, self.deadline())
            .await
            .map_err(node_reply)?;
        match t {
            Ok(t) => {
                let secs = t.remaining.max(0);
                Ok(Reply::Integer(if millis {
                    secs.saturating_mul(1000)
                } else {
                    secs
                }))
            }
            // The lease ended between the two reads: the key is going.
            Err(StateError::LeaseNotFound) => Ok(Reply::Integer(-2)),
            Err(e) => Err(state_reply(e)),
        }
    }

    // ---- key space -----------------------------------------------------

    async fn keys(&self, pattern: &[u8]) -> Res {
        glob::check_len(pattern).map_err(Reply::err)?;
        let (key, end) = range_end_for_prefix(glob::literal_prefix(pattern));
        self.check_read(&key, &end)?;
        let pattern = pattern.to_vec();
        let got = self
            .shared
            .node
            .read_kv(self.consistency(), self.deadline(), true, move |m| {
                m.range(&RangeRequest {
                    key,
                    range_end: end,
                    limit: KEYS_MAX + 1,
                    keys_only: true,
                    ..Default::default()
                })
                .map(|r| {
                    let more = r.kvs.len() as i64 > KEYS_MAX;
                    let keys: Vec<Vec<u8>> = r
                        .kvs
                        .into_iter()
                        .map(|kv| kv.key)
                        .filter(|k| glob::matches(&pattern, k))
                        .collect();
                    (more, keys)
                })
            })
            .await
            .map_err(node_reply)?
            .map_err(state_reply)?;
        let (more, keys) = got;
        if more {
            return Err(Reply::err(format!(
                "ERR warden: KEYS would look at more than {KEYS_MAX} keys; use SCAN"
            )));
        }
        Ok(Reply::Array(keys.into_iter().map(Reply::Bulk).collect()))
    }

    /// SCAN: the cursor is `revision << 24 | offset`: every page reads the
    /// key space at the revision of the first page (MVCC), so a full
    /// iteration returns every key that existed then exactly once.
    async fn scan(&self, a: &[Vec<u8>]) -> Res {
        let cursor: u64 = std::str::from_utf8(&a[1])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Reply::err("ERR invalid cursor"))?;
        let mut pattern: Option<Vec<u8>> = None;
        let mut count: i64 = 10;
        let mut i = 2;
        let mut only_strings = true;
        while i < a.len() {
            let v = a.get(i + 1).ok_or_else(syntax)?;
            match upper(&a[i]).as_str() {
                "MATCH" => {
                    glob::check_len(v).map_err(Reply::err)?;
                    pattern = Some(v.clone());
                }
                "COUNT" => {
                    count = int_arg(v)?;
                    if count < 1 {
                        return Err(syntax());
                    }
                }
                "TYPE" => only_strings = upper(v) == "STRING",
                _ => return Err(syntax()),
            }
            i += 2;
        }
        let count = count.min(KEYS_MAX);
        let rev = (cursor >> 24) as i64;
        let offset = (cursor & 0xff_ffff) as i64;
        let prefix = pattern
            .as_deref()
            .map(glob::literal_prefix)
            .unwrap_or_default();
        let (key, end) = range_end_for_prefix(prefix);
        self.check_read(&key, &end)?;
        let got = self
            .shared
            .node
            .read_kv(self.consistency(), self.deadline(), true, move |m| {
                let rev = if rev == 0 { m.current_revision() } else { rev };
                m.range(&RangeRequest {
                    key,
                    range_end: end,
                    limit: offset + count + 1,
                    revision: rev,
                    keys_only: true,
                    ..Default::default()
                })
                .map(|r| (rev, r))
            })
            .await
            .map_err(node_reply)?;
        let (rev, r) = match got {
            Ok(x) => x,
            Err(StateError::Compacted) => {
                return Err(Reply::err(
                    "ERR warden: the SCAN cursor's revision was compacted; start again from 0",
                ))
            }
            Err(e) => return Err(state_reply(e)),
        };
        let total = r.kvs.len() as i64;
        let page: Vec<Reply> = r
            .kvs
            .into_iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(usize::try_from(count).unwrap_or(0))
            .map(|kv| kv.key)
            .filter(|k| only_strings && pattern.as_deref().is_none_or(|p| glob::matches(p, k)))
            .map(Reply::Bulk)
            .collect();
        let next_offset = offset + count;
        let next = if total > next_offset {
            if next_offset > 0xff_ffff || rev > (u64::MAX >> 24) as i64 {
                return Err(Reply::err(
                    "ERR warden: SCAN cannot page this far (over 16M keys); use a MATCH prefix",
                ));
            }
            ((rev as u64) << 24) | next_offset as u64
        } else {
            0
        };
        Ok(Reply::Array(vec![
            Reply::bulk(next.to_string()),
            Reply::Array(page),
        ]))
    }

    async fn dbsize(&self) -> Res {
        self.check_read(&[0], &[0])?;
        let n = self
            .shared
            .node
            .read_kv(self.consistency(), self.deadline(), false, |m| m.len())
            .await
            .map_err(node_reply)?;
        Ok(Reply::Integer(n as i64))
    }

    // ---- server and connection ----------------------------------------

    async fn info(&self, a: &[Vec<u8>]) -> Res {
        let node = &self.shared.node;
        let st = node.status();
        let role = if st.leader == Some(st.id) {
            "master"
        } else {
            "slave"
        };
        let (leader_addr, keys) = node
            .with_state(|d| {
                (
                    st.leader
                        .and_then(|l| d.client_addrs.get(&l).cloned())
                        .unwrap_or_default(),
                    d.kv.mvcc().len(),
                )
            })
            .map_err(node_reply)?;
        let want: Vec<String> = a[1..].iter().map(|s| upper(s)).collect();
        let all = want.is_empty()
            || want
                .iter()
                .any(|w| matches!(w.as_str(), "ALL" | "EVERYTHING" | "DEFAULT"));
        let show = |s: &str| all || want.iter().any(|w| w == s);
        let mut out = String::new();
        if show("SERVER") {
            out.push_str(&format!(
                "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\n\
                 warden_version:{}\r\nprocess_id:{}\r\nwarden_member:{}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                std::process::id(),
                node.name()
            ));
        }
        if show("CLIENTS") {
            out.push_str(&format!(
                "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n",
                self.shared.connections(),
                self.shared.max_connections
            ));
        }
        if show("REPLICATION") {
            out.push_str(&format!(
                "# Replication\r\nrole:{role}\r\nwarden_member_id:{:x}\r\nwarden_leader_id:{}\r\n\
                 warden_leader_client_addr:{leader_addr}\r\nconnected_members:{}\r\n\r\n",
                st.id,
                st.leader
                    .map_or_else(|| "none".into(), |l| format!("{l:x}")),
                st.members.len()
            ));
        }
        if show("RAFT") {
            out.push_str(&format!(
                "# Raft\r\nraft_term:{}\r\nraft_last_log_index:{}\r\nraft_commit_index:{}\r\n\
                 raft_applied_index:{}\r\nrevision:{}\r\nlearners:{}\r\n\r\n",
                st.term,
                st.last_log_index,
                st.committed,
                st.applied,
                st.revision,
                st.learners.len()
            ));
        }
        if show("KEYSPACE") {
            out.push_str(&format!(
                "# Keyspace\r\ndb0:keys={keys},expires=0,avg_ttl=0\r\n"
            ));
        }
        Ok(Reply::bulk(out))
    }

    fn client(&mut self, a: &[Vec<u8>]) -> Res {
        let sub = upper(&a[1]);
        match (sub.as_str(), a.len()) {
            ("ID", 2) => Ok(Reply::Integer(i64::try_from(self.id).unwrap_or(i64::MAX))),
            ("GETNAME", 2) => Ok(Reply::opt(self.name.clone())),
            ("SETNAME", 3) => {
                let n = &a[2];
                if n.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
                    return Err(Reply::err(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    ));
                }
                self.name = (!n.is_empty()).then(|| n.clone());
                Ok(Reply::ok())
            }
            ("SETINFO", 4) | ("NO-EVICT", 3) | ("NO-TOUCH", 3) => Ok(Reply::ok()),
            ("INFO", 2) | ("LIST", _) => Ok(Reply::bulk(format!(
                "id={} addr={} name={} db=0 resp={}\n",
                self.id,
                self.peer,
                String::from_utf8_lossy(self.name.as_deref().unwrap_or_default()),
                self.proto
            ))),
            ("ID" | "GETNAME" | "SETNAME" | "SETINFO" | "INFO", _) => {
                Err(wrong_args(&format!("client|{}", sub.to_ascii_lowercase())))
            }
            _ => Err(Reply::err(format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&a[1])
            ))),
        }
    }

    async fn hello(&mut self, a: &[Vec<u8>]) -> Res {
        let mut proto = self.proto;
        let mut i = 1;
        if let Some(v) = a.get(1) {
            proto = match parse_i64(v) {
                Some(2) => 2,
                Some(3) => 3,
                Some(_) => return Err(Reply::err("NOPROTO unsupported protocol version")),
                None => {
                    return Err(Reply::err(
                        "ERR Protocol version is not an integer or out of range",
                    ))
                }
            };
            i = 2;
        }
        let mut name = None;
        while i < a.len() {
            match upper(&a[i]).as_str() {
                "AUTH" if i + 2 < a.len() => {
                    self.login(&a[i + 1], &a[i + 2]).await?;
                    i += 3;
                }
                "SETNAME" if i + 1 < a.len() => {
                    name = Some(a[i + 1].clone());
                    i += 2;
                }
                _ => return Err(syntax()),
            }
        }
        if self.caller.user().is_none() && self.auth_enabled() {
            return Err(Reply::err(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise \
                 the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the \
                 client and select the RESP protocol version at the same time",
            ));
        }
        if let Some(n) = name {
            self.name = (!n.is_empty()).then_some(n);
        }
        self.proto = proto;
        let st = self.shared.node.status();
        let role = if st.leader == Some(st.id) {
            "master"
        } else {
            "replica"
        };
        Ok(Reply::Map(vec![
            (Reply::bulk("server"), Reply::bulk("redis")),
            (Reply::bulk("version"), Reply::bulk(REDIS_VERSION)),
            (Reply::bulk("proto"), Reply::Integer(i64::from(proto))),
            (
                Reply::bulk("id"),
                Reply::Integer(i64::try_from(self.id).unwrap_or(i64::MAX)),
            ),
            (Reply::bulk("mode"), Reply::bulk("standalone")),
            (Reply::bulk("role"), Reply::bulk(role)),
            (Reply::bulk("modules"), Reply::Array(Vec::new())),
        ]))
    }

    async fn auth(&mut self, a: &[Vec<u8>]) -> Res {
        let (user, pass) = match a.len() {
            2 => (b"default".as_slice(), &a[1]),
            3 => (a[1].as_slice(), &a[2]),
            _ => return Err(syntax()),
        };
        self.login(user, pass).await?;
        Ok(Reply::ok())
    }

    /// Checks a user's password with warden's auth store (etcd's users)
    /// and makes the session that user.
    async fn login(&mut self, user: &[u8], pass: &[u8]) -> Result<(), Reply> {
        if !self.auth_enabled() {
            return Err(Reply::err(
                "ERR AUTH <password> called without any password configured for the default \
                 user. Are you sure your configuration is correct?",
            ));
        }
        let (Ok(user), Ok(pass)) = (std::str::from_utf8(user), std::str::from_utf8(pass)) else {
            return Err(wrongpass());
        };
        let r = self
            .shared
            .gate
            .check_password(self.peer.ip(), user, pass.to_owned(), self.deadline())
            .await;
        match r {
            Ok(_) => {
                self.caller = Caller(Some(user.to_owned()));
                Ok(())
            }
            Err(s) if s.code() == Code::InvalidArgument || s.code() == Code::FailedPrecondition => {
                Err(wrongpass())
            }
            Err(s) => Err(status_reply(s)),
        }
    }

    // ---- transactions --------------------------------------------------

    async fn watch(&mut self, keys: &[Vec<u8>]) -> Res {
        if self.multi.is_some() {
            return Err(Reply::err("ERR WATCH inside MULTI is not allowed"));
        }
        if self.watched.len() + keys.len() > MAX_TXN_OPS / 2 {
            return Err(Reply::err(format!(
                "ERR warden: at most {} watched keys",
                MAX_TXN_OPS / 2
            )));
        }
        let got = self.get_many(keys).await?;
        for (k, kv) in keys.iter().zip(got) {
            if !self.watched.iter().any(|(w, _)| w == k) {
                self.watched
                    .push((k.clone(), kv.map_or(0, |kv| kv.mod_revision)));
            }
        }
        Ok(Reply::ok())
    }

    async fn exec(&mut self) -> Res {
        let Some(queue) = self.multi.take() else {
            return Err(Reply::err("ERR EXEC without MULTI"));
        };
        let watched = std::mem::take(&mut self.watched);
        if self.multi_failed {
            self.multi_failed = false;
            return Err(Reply::err(
                "EXECABORT Transaction discarded because of previous errors.",
            ));
        }
        super::transaction::exec(self, &watched, queue).await
    }
}

impl Shared {
    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.max_connections
            .saturating_sub(self.slots.available_permits())
    }
}

/// Waits before retry `attempt` of a compare-and-swap that lost a race:
/// a random time up to 1, 2, 4 ... 64 ms, so contenders on different
/// members spread out instead of colliding again.
pub(super) async fn backoff(attempt: usize) {
    let cap = 1u64 << attempt.min(6);
    let ms = rand::random_range(0..=cap);
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

/// SET's options after the value: (condition, GET, expiry).
pub(super) fn set_options(a: &[Vec<u8>]) -> Result<(Cond, bool, Expiry), Reply> {
    let mut cond = Cond::None;
    let mut get = false;
    let mut expiry = Expiry::None;
    let mut i = 3;
    let invalid = || Reply::err("ERR invalid expire time in 'set' command");
    while i < a.len() {
        let opt = upper(&a[i]);
        match opt.as_str() {
            "NX" if cond == Cond::None => cond = Cond::Nx,
            "XX" if cond == Cond::None => cond = Cond::Xx,
            "GET" => get = true,
            "KEEPTTL" if expiry == Expiry::None => expiry = Expiry::Keep,
            "EX" | "PX" | "EXAT" | "PXAT" if expiry == Expiry::None => {
                let n = a.get(i + 1).ok_or_else(syntax)?;
                let n = int_arg(n)?;
                if n <= 0 {
                    return Err(invalid());
                }
                let ms = match opt.as_str() {
                    "EX" => n.checked_mul(1000),
                    "PX" => Some(n),
                    "EXAT" => n.checked_mul(1000).map(|t| t.saturating_sub(now_ms())),
                    _ => Some(n.saturating_sub(now_ms())),
                };
                let ms = ms.ok_or_else(invalid)?;
                // An absolute time already past: Redis sets and at once
                // expires the key; the nearest here is the shortest TTL.
                expiry = Expiry::In(ms.max(1));
                i += 1;
            }
            _ => return Err(syntax()),
        }
        i += 1;
    }
    Ok((cond, get, expiry))
}

/// A condition on SET.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cond {
    None,
    Nx,
    Xx,
}

pub(super) fn empty_key() -> Reply {
    Reply::err("ERR warden: empty keys are not allowed (etcd's key space has none)")
}

fn wrongpass() -> Reply {
    Reply::err("WRONGPASS invalid username-password pair or user is disabled.")
}

fn unique(keys: impl Iterator<Item = Vec<u8>>) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for k in keys {
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

/// A multi-key write is one txn, so at most etcd's `--max-txn-ops` keys.
pub(super) fn too_many(n: usize) -> Result<(), Reply> {
    if n > MAX_TXN_OPS {
        return Err(Reply::err(format!(
            "ERR warden: at most {MAX_TXN_OPS} keys in one write (it is one Raft transaction)"
        )));
    }
    Ok(())
}

/// Redis's reply to an unknown command.
fn unknown_command(args: &[Vec<u8>]) -> Reply {
    let show = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        s.chars().take(128).collect::<String>()
    };
    let mut m = format!(
        "ERR unknown command '{}', with args beginning with: ",
        show(args.first().map(Vec::as_slice).unwrap_or_default())
    );
    for a in args.iter().skip(1).take(16) {
        m.push_str(&format!("'{}' ", show(a)));
    }
    Reply::err(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ttls_round_up() {
        assert_eq!(lease_secs(1), 1);
        assert_eq!(lease_secs(1000), 1);
        assert_eq!(lease_secs(1001), 2);
        assert_eq!(lease_secs(i64::MAX), i64::MAX / 1000);
    }

    #[test]
    fn integers_as_redis_reads_them() {
        assert_eq!(parse_i64(b"12"), Some(12));
        assert_eq!(parse_i64(b"-3"), Some(-3));
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"+1"), None);
        assert_eq!(parse_i64(b"01"), None);
        assert_eq!(parse_i64(b" 1"), None);
        assert_eq!(parse_i64(b"99999999999999999999"), None);
    }

    #[test]
    fn prefix_ranges() {
        assert_eq!(range_end_for_prefix(b""), (vec![0], vec![0]));
        assert_eq!(
            range_end_for_prefix(b"ab"),
            (b"ab".to_vec(), b"ac".to_vec())
        );
        assert_eq!(
            range_end_for_prefix(&[b'a', 0xff]),
            (vec![b'a', 0xff], b"b".to_vec())
        );
        assert_eq!(range_end_for_prefix(&[0xff]), (vec![0xff], vec![0]));
    }

    #[test]
    fn unknown_command_is_worded_as_redis() {
        let r = unknown_command(&[b"FOO".to_vec(), b"a".to_vec()]);
        assert_eq!(
            r,
            Reply::Error("ERR unknown command 'FOO', with args beginning with: 'a' ".into())
        );
    }
}
