//! The command table: each command's arity (Redis's convention: `n` exact,
//! `-n` at least n, the name included), flags and key positions, for the
//! argument-count check before a command runs and for `COMMAND`, which
//! redis-cli and cluster-aware clients read.
//!
//! Must never: list a command `commands::dispatch` does not handle.

use super::codec::Reply;
use super::commands::upper;

/// One command's entry.
pub struct Spec {
    pub name: &'static str,
    pub arity: i64,
    pub flags: &'static [&'static str],
    pub first_key: i64,
    pub last_key: i64,
    pub step: i64,
}

impl Spec {
    /// Whether `n` arguments (the name included) fit the arity.
    pub fn arity_ok(&self, n: usize) -> bool {
        let n = n as i64;
        if self.arity >= 0 {
            n == self.arity
        } else {
            n >= -self.arity
        }
    }
}

const R: &[&str] = &["readonly", "fast"];
const W: &[&str] = &["write", "denyoom"];
const F: &[&str] = &["fast"];
const A: &[&str] = &["noscript", "loading", "stale", "fast", "no_auth"];

macro_rules! spec {
    ($n:literal, $a:expr, $f:expr, $k1:expr, $k2:expr, $s:expr) => {
        Spec {
            name: $n,
            arity: $a,
            flags: $f,
            first_key: $k1,
            last_key: $k2,
            step: $s,
        }
    };
}

/// Every command served, by name (lower case).
pub const TABLE: &[Spec] = &[
    spec!("append", 3, W, 1, 1, 1),
    spec!("auth", -2, A, 0, 0, 0),
    spec!("client", -2, F, 0, 0, 0),
    spec!("command", -1, F, 0, 0, 0),
    spec!("config", -2, F, 0, 0, 0),
    spec!("dbsize", 1, R, 0, 0, 0),
    spec!("decr", 2, W, 1, 1, 1),
    spec!("decrby", 3, W, 1, 1, 1),
    spec!("del", -2, W, 1, -1, 1),
    spec!("discard", 1, F, 0, 0, 0),
    spec!("echo", 2, F, 0, 0, 0),
    spec!("exec", 1, F, 0, 0, 0),
    spec!("exists", -2, R, 1, -1, 1),
    spec!("expire", -3, W, 1, 1, 1),
    spec!("expireat", -3, W, 1, 1, 1),
    spec!("flushall", -1, W, 0, 0, 0),
    spec!("flushdb", -1, W, 0, 0, 0),
    spec!("get", 2, R, 1, 1, 1),
    spec!("getdel", 2, W, 1, 1, 1),
    spec!("getset", 3, W, 1, 1, 1),
    spec!("hello", -1, A, 0, 0, 0),
    spec!("incr", 2, W, 1, 1, 1),
    spec!("incrby", 3, W, 1, 1, 1),
    spec!("info", -1, F, 0, 0, 0),
    spec!("keys", 2, R, 0, 0, 0),
    spec!("mget", -2, R, 1, -1, 1),
    spec!("mset", -3, W, 1, -1, 2),
    spec!("msetnx", -3, W, 1, -1, 2),
    spec!("multi", 1, F, 0, 0, 0),
    spec!("persist", 2, W, 1, 1, 1),
    spec!("pexpire", -3, W, 1, 1, 1),
    spec!("pexpireat", -3, W, 1, 1, 1),
    spec!("ping", -1, F, 0, 0, 0),
    spec!("psetex", 4, W, 1, 1, 1),
    spec!("pttl", 2, R, 1, 1, 1),
    spec!("quit", -1, A, 0, 0, 0),
    spec!("readonly", 1, F, 0, 0, 0),
    spec!("readwrite", 1, F, 0, 0, 0),
    spec!("reset", 1, A, 0, 0, 0),
    spec!("scan", -2, R, 0, 0, 0),
    spec!("select", 2, F, 0, 0, 0),
    spec!("set", -3, W, 1, 1, 1),
    spec!("setex", 4, W, 1, 1, 1),
    spec!("setnx", 3, W, 1, 1, 1),
    spec!("strlen", 2, R, 1, 1, 1),
    spec!("time", 1, F, 0, 0, 0),
    spec!("ttl", 2, R, 1, 1, 1),
    spec!("type", 2, R, 1, 1, 1),
    spec!("unlink", -2, W, 1, -1, 1),
    spec!("unwatch", 1, F, 0, 0, 0),
    spec!("watch", -2, F, 1, -1, 1),
];

/// The entry of `name` (any case).
pub fn find(name: &str) -> Option<&'static Spec> {
    let lower = name.to_ascii_lowercase();
    TABLE.iter().find(|s| s.name == lower)
}

fn info(s: &Spec) -> Reply {
    Reply::Array(vec![
        Reply::bulk(s.name),
        Reply::Integer(s.arity),
        Reply::Array(s.flags.iter().map(|f| Reply::Simple((*f).into())).collect()),
        Reply::Integer(s.first_key),
        Reply::Integer(s.last_key),
        Reply::Integer(s.step),
    ])
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name...`, `COMMAND DOCS`
/// (empty: redis-cli then uses its built-in help) and `COMMAND LIST`.
pub fn command(a: &[Vec<u8>], _proto: u8) -> Reply {
    let sub = a.get(1).map(|s| upper(s)).unwrap_or_default();
    match sub.as_str() {
        "" => Reply::Array(TABLE.iter().map(info).collect()),
        "COUNT" => Reply::Integer(TABLE.len() as i64),
        "INFO" => Reply::Array(
            a[2..]
                .iter()
                .map(|n| find(&upper(n)).map_or(Reply::Nil, info))
                .collect(),
        ),
        "DOCS" => Reply::Map(Vec::new()),
        "LIST" => Reply::Array(TABLE.iter().map(|s| Reply::bulk(s.name)).collect()),
        _ => Reply::err(format!(
            "ERR unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(&a[1])
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_arity_works() {
        assert!(TABLE.windows(2).all(|w| w[0].name < w[1].name));
        let get = find("GeT").unwrap();
        assert!(get.arity_ok(2) && !get.arity_ok(1) && !get.arity_ok(3));
        let set = find("set").unwrap();
        assert!(set.arity_ok(3) && set.arity_ok(7) && !set.arity_ok(2));
        assert!(find("nope").is_none());
    }
}
