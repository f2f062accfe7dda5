//! WATCH / MULTI / EXEC as one etcd compare-and-swap transaction.
//!
//! EXEC reads every key the queued commands name (linearizably), runs the
//! commands against that view in order (so `SET a 1` then `INCR a` answers
//! 2), and proposes one txn: outer compares that every WATCHed key still
//! has the mod revision it had when watched (else EXEC answers nil, as
//! Redis does when a watched key changed), and inside them a nested txn
//! that compares every key read against the view and writes each changed
//! key once with its final value. If only the nested compare fails (a key
//! that was not watched changed between the read and the commit), EXEC runs
//! again on fresh values; the replies always describe the state the writes
//! were computed from, which is the state at the txn's revision.
//!
//! Must never: write from a view a compare does not pin, or queue a command
//! it cannot express as reads and puts/deletes of named keys (those are
//! refused when queued, and EXEC then aborts).

use std::collections::BTreeMap;

use super::codec::Reply;
use super::commands::{
    absent, backoff, del_op, empty_key, int_arg, not_integer, parse_i64, put_keep_ttl, put_op,
    set_options, too_many, unchanged, upper, Cond, Expiry, Session, MAX_CAS_ATTEMPTS,
};
use warden_core::state::types::{KeyValue, RequestOp, TxnRequest};

/// Whether `name` can be queued after MULTI.
pub fn queueable(name: &str) -> bool {
    matches!(
        name,
        "GET"
            | "MGET"
            | "EXISTS"
            | "STRLEN"
            | "TYPE"
            | "SET"
            | "SETNX"
            | "SETEX"
            | "PSETEX"
            | "GETSET"
            | "GETDEL"
            | "DEL"
            | "UNLINK"
            | "MSET"
            | "MSETNX"
            | "INCR"
            | "INCRBY"
            | "DECR"
            | "DECRBY"
            | "APPEND"
            | "PING"
            | "ECHO"
    )
}

/// The keys command `a` names.
fn keys_of(a: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let name = upper(&a[0]);
    match name.as_str() {
        "MGET" | "EXISTS" | "DEL" | "UNLINK" => a[1..].to_vec(),
        "MSET" | "MSETNX" => a[1..].iter().step_by(2).cloned().collect(),
        "PING" | "ECHO" => Vec::new(),
        _ => a.get(1).cloned().into_iter().collect(),
    }
}

/// How a key's lease ends up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lease {
    /// As it was (the key existed before the txn; absent keys get none).
    Keep,
    Set(i64),
}

/// The view the queued commands run against.
struct View {
    /// Key → value and lease as the commands leave it (`None`: absent).
    now: BTreeMap<Vec<u8>, Option<(Vec<u8>, Lease)>>,
    /// Keys a command wrote.
    dirty: Vec<Vec<u8>>,
}

impl View {
    fn get(&self, k: &[u8]) -> Option<&Vec<u8>> {
        self.now.get(k).and_then(|v| v.as_ref().map(|(v, _)| v))
    }

    fn set(&mut self, k: &[u8], v: Option<(Vec<u8>, Lease)>) {
        self.now.insert(k.to_vec(), v);
        if !self.dirty.iter().any(|d| d == k) {
            self.dirty.push(k.to_vec());
        }
    }

    /// Runs one queued command; `lease` is the one granted for it, if its
    /// expiry asked for one.
    fn run(&mut self, a: &[Vec<u8>], lease: Option<i64>) -> Reply {
        match self.step(a, lease) {
            Ok(r) | Err(r) => r,
        }
    }

    fn step(&mut self, a: &[Vec<u8>], lease: Option<i64>) -> Result<Reply, Reply> {
        let name = upper(&a[0]);
        let arg = |i: usize| a.get(i).map(Vec::as_slice).unwrap_or_default();
        let fresh = |v: Vec<u8>| Some((v, lease.map_or(Lease::Set(0), Lease::Set)));
        match name.as_str() {
            "PING" => Ok(if a.len() > 1 {
                Reply::bulk(arg(1))
            } else {
                Reply::Simple("PONG".into())
            }),
            "ECHO" => Ok(Reply::bulk(arg(1))),
            "GET" => Ok(Reply::opt(self.get(arg(1)).cloned())),
            "STRLEN" => Ok(Reply::Integer(
                self.get(arg(1)).map_or(0, |v| v.len() as i64),
            )),
            "TYPE" => Ok(Reply::Simple(
                if self.get(arg(1)).is_some() {
                    "string"
                } else {
                    "none"
                }
                .into(),
            )),
            "EXISTS" => Ok(Reply::Integer(
                a[1..].iter().filter(|k| self.get(k).is_some()).count() as i64,
            )),
            "MGET" => Ok(Reply::Array(
                a[1..]
                    .iter()
                    .map(|k| Reply::opt(self.get(k).cloned()))
                    .collect(),
            )),
            "SET" => {
                let (cond, get, expiry) = set_options(a)?;
                let old = self.get(arg(1)).cloned();
                let ok = match cond {
                    Cond::None => true,
                    Cond::Nx => old.is_none(),
                    Cond::Xx => old.is_some(),
                };
                if ok {
                    let l = match expiry {
                        Expiry::Keep => self
                            .now
                            .get(arg(1))
                            .and_then(|v| v.as_ref().map(|(_, l)| *l))
                            .unwrap_or(Lease::Set(0)),
                        _ => lease.map_or(Lease::Set(0), Lease::Set),
                    };
                    self.set(arg(1), Some((arg(2).to_vec(), l)));
                }
                Ok(match (get, ok) {
                    (true, _) => Reply::opt(old),
                    (false, true) => Reply::ok(),
                    (false, false) => Reply::Nil,
                })
            }
            "SETNX" => {
                if self.get(arg(1)).is_some() {
                    return Ok(Reply::Integer(0));
                }
                self.set(arg(1), fresh(arg(2).to_vec()));
                Ok(Reply::Integer(1))
            }
            "SETEX" | "PSETEX" => {
                self.set(arg(1), fresh(arg(3).to_vec()));
                Ok(Reply::ok())
            }
            "GETSET" => {
                let old = self.get(arg(1)).cloned();
                self.set(arg(1), fresh(arg(2).to_vec()));
                Ok(Reply::opt(old))
            }
            "GETDEL" => {
                let old = self.get(arg(1)).cloned();
                if old.is_some() {
                    self.set(arg(1), None);
                }
                Ok(Reply::opt(old))
            }
            "DEL" | "UNLINK" => {
                let mut n = 0;
                let mut seen: Vec<&Vec<u8>> = Vec::new();
                for k in &a[1..] {
                    if seen.contains(&k) {
                        continue;
                    }
                    seen.push(k);
                    if self.get(k).is_some() {
                        self.set(k, None);
                        n += 1;
                    }
                }
                Ok(Reply::Integer(n))
            }
            "MSET" | "MSETNX" => {
                if a.len().is_multiple_of(2) {
                    return Err(Reply::err(format!(
                        "ERR wrong number of arguments for '{}' command",
                        name.to_ascii_lowercase()
                    )));
                }
                if name == "MSETNX" && a[1..].iter().step_by(2).any(|k| self.get(k).is_some()) {
                    return Ok(Reply::Integer(0));
                }
                for p in a[1..].chunks(2) {
                    if let [k, v] = p {
                        self.set(k, Some((v.clone(), Lease::Set(0))));
                    }
                }
                Ok(if name == "MSETNX" {
                    Reply::Integer(1)
                } else {
                    Reply::ok()
                })
            }
            "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
                let by = match name.as_str() {
                    "INCR" => 1,
                    "DECR" => -1,
                    "INCRBY" => int_arg(arg(2))?,
                    _ => int_arg(arg(2))?
                        .checked_neg()
                        .ok_or_else(|| Reply::err("ERR decrement would overflow"))?,
                };
                let old = match self.get(arg(1)) {
                    None => 0,
                    Some(v) => parse_i64(v).ok_or_else(not_integer)?,
                };
                let n = old
                    .checked_add(by)
                    .ok_or_else(|| Reply::err("ERR increment or decrement would overflow"))?;
                self.write_keeping_lease(arg(1), n.to_string().into_bytes());
                Ok(Reply::Integer(n))
            }
            "APPEND" => {
                let mut v = self.get(arg(1)).cloned().unwrap_or_default();
                v.extend_from_slice(arg(2));
                let len = v.len() as i64;
                self.write_keeping_lease(arg(1), v);
                Ok(Reply::Integer(len))
            }
            other => Err(Reply::err(format!(
                "ERR warden: {other} is not supported inside MULTI"
            ))),
        }
    }

    fn write_keeping_lease(&mut self, k: &[u8], v: Vec<u8>) {
        let l = self
            .now
            .get(k)
            .and_then(|x| x.as_ref().map(|(_, l)| *l))
            .unwrap_or(Lease::Set(0));
        self.set(k, Some((v, l)));
    }
}

/// Runs the queued commands as one transaction (see the module doc).
pub async fn exec(
    s: &Session,
    watched: &[(Vec<u8>, i64)],
    queue: Vec<Vec<Vec<u8>>>,
) -> Result<Reply, Reply> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for a in &queue {
        for k in keys_of(a) {
            if k.is_empty() {
                return Err(empty_key());
            }
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    too_many(keys.len())?;
    // Leases for the queued commands that set a TTL, granted up front.
    let mut leases: Vec<Option<i64>> = Vec::with_capacity(queue.len());
    for a in &queue {
        let ms = match upper(&a[0]).as_str() {
            "SET" => match set_options(a) {
                Ok((_, _, Expiry::In(ms))) => Some(ms),
                _ => None,
            },
            "SETEX" => parse_i64(&a[2]).and_then(|n| n.checked_mul(1000)),
            "PSETEX" => parse_i64(&a[2]),
            _ => None,
        };
        let id = match ms {
            Some(ms) if ms > 0 => match s.grant(ms).await {
                Ok(id) => Some(id),
                Err(e) => {
                    drop_all(s, &leases);
                    return Err(e);
                }
            },
            _ => None,
        };
        leases.push(id);
    }
    let outcome = attempt_all(s, watched, &queue, &keys, &leases).await;
    if !matches!(outcome, Ok(Reply::Array(_))) {
        drop_all(s, &leases);
    }
    outcome
}

fn drop_all(s: &Session, leases: &[Option<i64>]) {
    for id in leases.iter().flatten() {
        s.drop_lease(*id);
    }
}

async fn attempt_all(
    s: &Session,
    watched: &[(Vec<u8>, i64)],
    queue: &[Vec<Vec<u8>>],
    keys: &[Vec<u8>],
    leases: &[Option<i64>],
) -> Result<Reply, Reply> {
    let watch_compares: Vec<_> = watched
        .iter()
        .map(|(k, rev)| {
            unchanged(
                k,
                (*rev != 0)
                    .then(|| KeyValue {
                        mod_revision: *rev,
                        ..Default::default()
                    })
                    .as_ref(),
            )
        })
        .collect();
    for attempt in 0..MAX_CAS_ATTEMPTS {
        if attempt > 0 {
            backoff(attempt).await;
        }
        let base = s.get_many(keys).await?;
        let base: BTreeMap<Vec<u8>, Option<KeyValue>> = keys.iter().cloned().zip(base).collect();
        let mut view = View {
            now: base
                .iter()
                .map(|(k, kv)| {
                    (
                        k.clone(),
                        kv.as_ref().map(|kv| (kv.value.clone(), Lease::Keep)),
                    )
                })
                .collect(),
            dirty: Vec::new(),
        };
        let replies: Vec<Reply> = queue
            .iter()
            .zip(leases)
            .map(|(a, l)| view.run(a, *l))
            .collect();
        // What the transaction writes, bounded as a gRPC request is: the
        // queue's bytes are (see `Session::run`), but APPEND and SETRANGE
        // grow values already stored.
        let written: usize = view
            .dirty
            .iter()
            .map(|k| {
                let v = view
                    .now
                    .get(k)
                    .and_then(|e| e.as_ref())
                    .map_or(0, |(v, _)| v.len());
                k.len().saturating_add(v)
            })
            .fold(0, usize::saturating_add);
        if written > s.max_request_bytes() {
            return Err(Reply::err(format!(
                "ERR etcdserver: request is too large (this transaction writes {written} bytes; \
                 --max-request-bytes is {})",
                s.max_request_bytes()
            )));
        }
        let mut ops = Vec::new();
        for k in &view.dirty {
            let existed = base.get(k).is_some_and(Option::is_some);
            match view.now.get(k).cloned().flatten() {
                Some((v, Lease::Keep)) if existed => ops.push(put_keep_ttl(k, v, false)),
                Some((v, Lease::Keep)) => ops.push(put_op(k, v, 0, false)),
                Some((v, Lease::Set(id))) => ops.push(put_op(k, v, id, false)),
                None if existed => ops.push(del_op(k, false)),
                None => {}
            }
        }
        let pins: Vec<_> = base
            .iter()
            .map(|(k, kv)| match kv {
                Some(kv) => unchanged(k, Some(kv)),
                None => absent(k),
            })
            .collect();
        let t = TxnRequest {
            compare: watch_compares.clone(),
            success: vec![RequestOp::Txn(TxnRequest {
                compare: pins,
                success: ops,
                failure: Vec::new(),
            })],
            failure: Vec::new(),
        };
        let r = s.txn(t).await?;
        if !r.succeeded {
            return Ok(Reply::NilArray);
        }
        let inner_ok = match r.responses.first() {
            Some(warden_core::state::types::ResponseOp::Txn(t)) => t.succeeded,
            _ => false,
        };
        if inner_ok {
            return Ok(Reply::Array(replies));
        }
    }
    Err(Reply::err(format!(
        "ERR warden: the keys of this transaction changed under {MAX_CAS_ATTEMPTS} attempts in a row; try again"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn commands_see_earlier_ones() {
        let mut v = View {
            now: BTreeMap::from([(b"a".to_vec(), Some((b"5".to_vec(), Lease::Keep)))]),
            dirty: Vec::new(),
        };
        assert_eq!(v.run(&args(&["INCR", "a"]), None), Reply::Integer(6));
        assert_eq!(v.run(&args(&["SET", "b", "x"]), None), Reply::ok());
        assert_eq!(v.run(&args(&["APPEND", "b", "y"]), None), Reply::Integer(2));
        assert_eq!(v.run(&args(&["GET", "b"]), None), Reply::bulk("xy"));
        assert_eq!(v.run(&args(&["SETNX", "b", "z"]), None), Reply::Integer(0));
        assert_eq!(
            v.run(&args(&["DEL", "a", "a", "c"]), None),
            Reply::Integer(1)
        );
        assert_eq!(v.run(&args(&["EXISTS", "a", "b"]), None), Reply::Integer(1));
        assert_eq!(v.dirty, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(v.now.get(b"a".as_slice()), Some(&None));
        // A failing command answers its error; the others still run.
        v.run(&args(&["SET", "n", "x"]), None);
        assert!(matches!(
            v.run(&args(&["INCR", "n"]), None),
            Reply::Error(_)
        ));
    }

    #[test]
    fn keys_named() {
        assert_eq!(
            keys_of(&args(&["MSET", "a", "1", "b", "2"])),
            args(&["a", "b"])
        );
        assert_eq!(keys_of(&args(&["DEL", "a", "b"])), args(&["a", "b"]));
        assert_eq!(keys_of(&args(&["SET", "a", "1", "EX", "3"])), args(&["a"]));
        assert!(keys_of(&args(&["PING"])).is_empty());
    }
}
