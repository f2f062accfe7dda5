//! Redis's protocol (`--resp-addr`) on real warden processes: redis-cli and
//! etcdctl share keys, raw RESP and inline commands over a socket, TTLs as
//! leases (expiry, and no early expiry across a leader kill), atomic INCR
//! from concurrent clients, writes through a follower, WATCH/MULTI/EXEC,
//! and hostile input refused without hurting other connections.
//!
//! The redis-cli tests skip (with a message) when redis-cli is not
//! installed; CI installs Debian's `redis-tools`. The others speak RESP
//! themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::etcd::{etcdctl, require_etcdctl};
use common::{eventually, free_ports, get, Cluster};

const ELECT: Duration = Duration::from_secs(20);

/// A cluster of `n` whose members also serve RESP; returns it and the RESP
/// addresses by member.
async fn resp_cluster(n: usize) -> (Cluster, Vec<String>) {
    resp_cluster_with(n, &[]).await
}

/// Like `resp_cluster`, with extra server flags.
async fn resp_cluster_with(n: usize, extra: &[&str]) -> (Cluster, Vec<String>) {
    let mut c = Cluster::stopped(n, extra);
    let ports = free_ports(n);
    let mut addrs = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let a = format!("127.0.0.1:{p}");
        c.members[i].args = vec!["--resp-addr".into(), a.clone()];
        addrs.push(a);
    }
    for i in 0..n {
        c.restart(i);
    }
    c.wait_leader(ELECT).await;
    (c, addrs)
}

fn redis_cli_path() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("redis-cli"))
            .find(|p| p.is_file())
    })
}

/// redis-cli's output for `args` against `addr` (trailing newline removed).
fn redis_cli(cli: &PathBuf, addr: &str, args: &[&str]) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let out = Command::new(cli)
        .args(["-h", host, "-p", port])
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

macro_rules! need_redis_cli {
    () => {
        match redis_cli_path() {
            Some(p) => p,
            None => {
                eprintln!("SKIPPED: redis-cli is not installed (Debian package redis-tools)");
                return;
            }
        }
    };
}

// ---------------------------------------------------------------------------
// A minimal RESP client
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum R {
    Simple(String),
    Err(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<R>),
}

impl R {
    fn bulk(s: &str) -> R {
        R::Bulk(s.as_bytes().to_vec())
    }
}

struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: &str) -> std::io::Result<Conn> {
        let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))??;
        Ok(Conn { s, buf: Vec::new() })
    }

    fn encode(args: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        out
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes).await
    }

    async fn cmd(&mut self, args: &[&str]) -> std::io::Result<R> {
        self.send(&Self::encode(args)).await?;
        self.read().await
    }

    /// One reply (10 s at most).
    async fn read(&mut self) -> std::io::Result<R> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((r, n)) = parse(&self.buf) {
                self.buf.drain(..n);
                return Ok(r);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(left, self.s.read(&mut chunk))
                .await
                .map_err(|_| std::io::Error::other("reply timed out"))??;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether the server closed the connection (within 5 s).
    async fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

fn parse(b: &[u8]) -> Option<(R, usize)> {
    let end = b.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&b[1..end]).ok()?;
    let next = end + 2;
    match b.first()? {
        b'+' => Some((R::Simple(line.into()), next)),
        b'-' => Some((R::Err(line.into()), next)),
        b':' => Some((R::Int(line.parse().ok()?), next)),
        b'_' => Some((R::Nil, next)),
        b'$' => {
            let n: i64 = line.parse().ok()?;
            if n < 0 {
                return Some((R::Nil, next));
            }
            let n = n as usize;
            let body = b.get(next..next + n)?;
            b.get(next + n..next + n + 2)?;
            Some((R::Bulk(body.to_vec()), next + n + 2))
        }
        b'*' | b'%' => {
            let n: i64 = line.parse().ok()?;
            if n < 0 {
                return Some((R::Nil, next));
            }
            let n = if b[0] == b'%' { n * 2 } else { n };
            let mut at = next;
            let mut items = Vec::new();
            for _ in 0..n {
                let (r, used) = parse(&b[at..])?;
                items.push(r);
                at += used;
            }
            Some((R::Array(items), at))
        }
        _ => None,
    }
}

async fn cmd(addr: &str, args: &[&str]) -> R {
    Conn::open(addr).await.unwrap().cmd(args).await.unwrap()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_and_etcdctl_share_keys() {
    let cli = need_redis_cli!();
    let ctl = require_etcdctl();
    let (c, resp) = resp_cluster(1).await;
    let eps = c.endpoints();
    assert_eq!(redis_cli(&cli, &resp[0], &["SET", "a", "1"]), "OK");
    let out = etcdctl(&ctl, &eps, &["get", "a", "--print-value-only"], None);
    assert!(out.success, "{out:?}");
    assert_eq!(out.stdout.trim(), "1");
    let out = etcdctl(&ctl, &eps, &["put", "b", "2"], None);
    assert!(out.success, "{out:?}");
    assert_eq!(redis_cli(&cli, &resp[0], &["GET", "b"]), "2");
    // Pipelined input through redis-cli, and its error output.
    assert_eq!(redis_cli(&cli, &resp[0], &["INCR", "b"]), "3");
    assert_eq!(
        redis_cli(&cli, &resp[0], &["NOSUCH", "x"]),
        "ERR unknown command 'NOSUCH', with args beginning with: 'x'"
    );
    assert_eq!(
        redis_cli(&cli, &resp[0], &["GET"]),
        "ERR wrong number of arguments for 'get' command"
    );
    let keys = redis_cli(&cli, &resp[0], &["--scan"]);
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort_unstable();
    assert_eq!(keys, ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_socket_inline_and_multibulk() {
    let (_c, resp) = resp_cluster(1).await;
    let mut conn = Conn::open(&resp[0]).await.unwrap();
    // Inline commands as typed over nc, then a pipelined multibulk pair.
    conn.send(b"SET c 3\r\nGET c\r\n").await.unwrap();
    assert_eq!(conn.read().await.unwrap(), R::Simple("OK".into()));
    assert_eq!(conn.read().await.unwrap(), R::bulk("3"));
    let mut batch = Conn::encode(&["SET", "d", "x y"]);
    batch.extend(Conn::encode(&["APPEND", "d", "z"]));
    batch.extend(Conn::encode(&["MGET", "c", "d", "nope"]));
    conn.send(&batch).await.unwrap();
    assert_eq!(conn.read().await.unwrap(), R::Simple("OK".into()));
    assert_eq!(conn.read().await.unwrap(), R::Int(4));
    assert_eq!(
        conn.read().await.unwrap(),
        R::Array(vec![R::bulk("3"), R::bulk("x yz"), R::Nil])
    );
    // The exact bytes, as the issue spells them.
    let mut raw = TcpStream::connect(&resp[0]).await.unwrap();
    raw.write_all(b"SET c 3\r\nGET c\r\n").await.unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < b"+OK\r\n$1\r\n3\r\n".len() && Instant::now() < deadline {
        let mut chunk = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {got:?}");
        got.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(got, b"+OK\r\n$1\r\n3\r\n");
    // RESP3 after HELLO 3: nil is `_`.
    let mut c3 = Conn::open(&resp[0]).await.unwrap();
    let hello = c3.cmd(&["HELLO", "3"]).await.unwrap();
    let R::Array(fields) = hello else {
        panic!("HELLO: {hello:?}")
    };
    assert!(fields
        .windows(2)
        .any(|w| w[0] == R::bulk("proto") && w[1] == R::Int(3)));
    c3.send(&Conn::encode(&["GET", "nope"])).await.unwrap();
    let mut b = [0u8; 3];
    c3.s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"_\r\n");
    assert_eq!(
        c3.cmd(&["HELLO", "4"]).await.unwrap(),
        R::Err("NOPROTO unsupported protocol version".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_nx_px_is_a_lease() {
    let (_c, resp) = resp_cluster(1).await;
    let a = &resp[0];
    let set_at = Instant::now();
    assert_eq!(
        cmd(a, &["SET", "lock", "me", "NX", "PX", "1000"]).await,
        R::Simple("OK".into())
    );
    assert_eq!(
        cmd(a, &["SET", "lock", "you", "NX", "PX", "1000"]).await,
        R::Nil
    );
    assert_eq!(cmd(a, &["GET", "lock"]).await, R::bulk("me"));
    let R::Int(ttl) = cmd(a, &["PTTL", "lock"]).await else {
        panic!("PTTL")
    };
    assert!((0..=2000).contains(&ttl), "PTTL {ttl}");
    assert_eq!(cmd(a, &["TTL", "nope"]).await, R::Int(-2));
    assert_eq!(cmd(a, &["SET", "plain", "v"]).await, R::Simple("OK".into()));
    assert_eq!(cmd(a, &["TTL", "plain"]).await, R::Int(-1));
    eventually(Duration::from_secs(15), || async {
        match cmd(a, &["GET", "lock"]).await {
            R::Nil => Ok(()),
            other => Err(format!("still there: {other:?}")),
        }
    })
    .await;
    let gone_after = set_at.elapsed();
    assert!(
        gone_after >= Duration::from_millis(1000),
        "expired early: {gone_after:?}"
    );
    // EXPIRE / PERSIST move a key onto and off a lease.
    assert_eq!(cmd(a, &["EXPIRE", "plain", "100"]).await, R::Int(1));
    let R::Int(t) = cmd(a, &["TTL", "plain"]).await else {
        panic!("TTL")
    };
    assert!((90..=100).contains(&t), "TTL {t}");
    assert_eq!(cmd(a, &["PERSIST", "plain"]).await, R::Int(1));
    assert_eq!(cmd(a, &["TTL", "plain"]).await, R::Int(-1));
    assert_eq!(cmd(a, &["EXPIRE", "nope", "10"]).await, R::Int(0));
    // KEEPTTL and INCR keep the lease; plain SET drops it.
    cmd(a, &["SET", "n", "1", "EX", "100"]).await;
    cmd(a, &["SET", "n", "2", "KEEPTTL"]).await;
    cmd(a, &["INCR", "n"]).await;
    assert!(matches!(cmd(a, &["TTL", "n"]).await, R::Int(t) if t > 0));
    assert_eq!(cmd(a, &["GET", "n"]).await, R::bulk("3"));
    cmd(a, &["SET", "n", "4"]).await;
    assert_eq!(cmd(a, &["TTL", "n"]).await, R::Int(-1));
}

/// Concurrent INCRs through every member, with the leader killed half way:
/// each acknowledged INCR counts exactly once. An INCR answered with an
/// error (`leader changed`, a timeout, a connection to the killed member
/// cut) is in doubt, as with etcd: it may or may not have applied, so the
/// total is between the acknowledged count and that plus the in-doubt ones.
/// `no leader` is a refusal before anything was proposed (as
/// `warden-client`'s retry rules have it) and counts as neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_incr_with_a_leader_kill_counts_every_ack_once() {
    let (mut c, resp) = resp_cluster(3).await;
    let leader = c.wait_leader(ELECT).await;
    let clients = 8;
    let each = 100;
    let mut tasks = Vec::new();
    for i in 0..clients {
        let resp = resp.clone();
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut in_doubt) = (0i64, 0i64);
            let mut at = i % resp.len();
            let mut conn: Option<Conn> = None;
            let mut done = 0;
            let deadline = Instant::now() + Duration::from_secs(120);
            while done < each && Instant::now() < deadline {
                let cn = match conn.as_mut() {
                    Some(cn) => cn,
                    None => match Conn::open(&resp[at]).await {
                        Ok(cn) => conn.insert(cn),
                        Err(_) => {
                            at = (at + 1) % resp.len();
                            continue;
                        }
                    },
                };
                match cn.cmd(&["INCR", "counter"]).await {
                    Ok(R::Int(_)) => {
                        acked += 1;
                        done += 1;
                    }
                    // A member cut off from its quorum (one that just
                    // stepped down for want of one) refuses at once, before
                    // proposing anything: not applied, so neither acked nor
                    // in doubt, and it does not use up an attempt, or a
                    // leaderless moment under load would use them all.
                    // Retried after a pause, as a client would.
                    Ok(R::Err(e)) if e == "ERR etcdserver: no leader" => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Ok(R::Err(e)) if e.starts_with("ERR etcdserver:") => {
                        in_doubt += 1;
                        done += 1;
                    }
                    Ok(other) => panic!("INCR on {}: {other:?}", resp[at]),
                    Err(_) => {
                        // The connection broke with the INCR in flight.
                        in_doubt += 1;
                        done += 1;
                        conn = None;
                        at = (at + 1) % resp.len();
                    }
                }
            }
            (acked, in_doubt)
        }));
    }
    // Half way, kill the leader (or go on once every client has finished:
    // the counts below then say what went wrong).
    eventually(Duration::from_secs(60), || {
        let addr = resp[(leader + 1) % 3].clone();
        let finished = tasks.iter().all(|t| t.is_finished());
        async move {
            if finished {
                return Ok(());
            }
            match cmd(&addr, &["GET", "counter"]).await {
                R::Bulk(v) if String::from_utf8_lossy(&v).parse::<i64>().unwrap_or(0) >= 300 => {
                    Ok(())
                }
                other => Err(format!("counter not at 300 yet: {other:?}")),
            }
        }
    })
    .await;
    c.kill(leader);
    let (mut acked, mut in_doubt) = (0, 0);
    for t in tasks {
        let (a, d) = t.await.unwrap();
        acked += a;
        in_doubt += d;
    }
    let survivor = resp[(leader + 1) % 3].clone();
    let total = eventually(Duration::from_secs(20), || {
        let addr = survivor.clone();
        async move {
            match cmd(&addr, &["GET", "counter"]).await {
                R::Bulk(v) => Ok(String::from_utf8_lossy(&v).parse::<i64>().unwrap()),
                other => Err(format!("GET counter: {other:?}")),
            }
        }
    })
    .await;
    assert!(
        (acked..=acked + in_doubt).contains(&total),
        "total {total}, acknowledged {acked}, in doubt {in_doubt}"
    );
    assert!(
        acked >= 300,
        "only {acked} INCRs acknowledged ({in_doubt} in doubt)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_writes_are_forwarded_and_readonly_reads_locally() {
    let (c, resp) = resp_cluster(3).await;
    let leader = c.wait_leader(ELECT).await;
    let f = (leader + 1) % 3;
    assert_eq!(
        cmd(&resp[f], &["SET", "via-follower", "yes"]).await,
        R::Simple("OK".into())
    );
    // Applied: the leader's etcd API sees it.
    let v = get(&c.members[leader].client, "via-follower", false)
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some(b"yes".as_slice()));
    // INFO names the roles.
    let R::Bulk(info) = cmd(&resp[f], &["INFO", "replication"]).await else {
        panic!("INFO")
    };
    assert!(String::from_utf8_lossy(&info).contains("role:slave"));
    let R::Bulk(info) = cmd(&resp[leader], &["INFO"]).await else {
        panic!("INFO")
    };
    let info = String::from_utf8_lossy(&info);
    assert!(
        info.contains("role:master") && info.contains("raft_term:"),
        "{info}"
    );
    // READONLY: serializable reads from the follower's own state.
    let mut conn = Conn::open(&resp[f]).await.unwrap();
    assert_eq!(
        conn.cmd(&["READONLY"]).await.unwrap(),
        R::Simple("OK".into())
    );
    eventually(Duration::from_secs(10), || {
        let addr = resp[f].clone();
        async move {
            match cmd(&addr, &["GET", "via-follower"]).await {
                R::Bulk(v) if v == b"yes" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert_eq!(
        conn.cmd(&["GET", "via-follower"]).await.unwrap(),
        R::bulk("yes")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_and_others_keep_working() {
    let (_c, resp) = resp_cluster(1).await;
    let a = &resp[0];
    let mut good = Conn::open(a).await.unwrap();
    assert_eq!(
        good.cmd(&["SET", "k", "v"]).await.unwrap(),
        R::Simple("OK".into())
    );
    // A bulk length over the request limit (1.5 MiB): refused from the
    // header alone, connection closed.
    let mut big = Conn::open(a).await.unwrap();
    big.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000000\r\n")
        .await
        .unwrap();
    let r = big.read().await.unwrap();
    assert!(
        matches!(&r, R::Err(e) if e.starts_with("ERR Protocol error: invalid bulk length")),
        "{r:?}"
    );
    assert!(big.closed().await);
    // Huge counts, negative lengths, binary garbage: an error and a close.
    for bad in [
        b"*99999999999\r\n".as_slice(),
        b"*1\r\n$-7\r\n",
        b"*1\r\n+OK\r\n",
        b"*\xff\xfe\r\n",
    ] {
        let mut c = Conn::open(a).await.unwrap();
        c.send(bad).await.unwrap();
        assert!(matches!(c.read().await.unwrap(), R::Err(_)), "{bad:?}");
        assert!(c.closed().await, "{bad:?}");
    }
    // An inline line without end, past 64 KiB.
    let mut c = Conn::open(a).await.unwrap();
    let _ = c.send(&vec![b'a'; 70 * 1024]).await;
    assert!(matches!(c.read().await, Ok(R::Err(_)) | Err(_)));
    // A value over the request limit sent in full is refused too.
    let mut c = Conn::open(a).await.unwrap();
    let huge = "x".repeat(1_600_000);
    let r = c.cmd(&["SET", "big", &huge]).await;
    assert!(matches!(r, Ok(R::Err(_)) | Err(_)), "{r:?}");
    // MULTI queues no more than one request's bytes: two values of 1 MB
    // each are under the limit alone, and abort the transaction together
    // (one EXEC of 50 such values, over 64 MiB, once stopped every write
    // of the cluster until the leader was killed).
    let mut c = Conn::open(a).await.unwrap();
    let mb = "m".repeat(1_000_000);
    c.cmd(&["MULTI"]).await.unwrap();
    assert_eq!(
        c.cmd(&["SET", "q1", &mb]).await.unwrap(),
        R::Simple("QUEUED".into())
    );
    let r = c.cmd(&["SET", "q2", &mb]).await.unwrap();
    assert!(
        matches!(&r, R::Err(e) if e.contains("--max-request-bytes")),
        "{r:?}"
    );
    let r = c.cmd(&["EXEC"]).await.unwrap();
    assert!(
        matches!(&r, R::Err(e) if e.starts_with("EXECABORT")),
        "{r:?}"
    );
    assert_eq!(good.cmd(&["EXISTS", "q1"]).await.unwrap(), R::Int(0));
    // APPEND grows a stored value: what the transaction would write is
    // bounded too.
    assert_eq!(
        c.cmd(&["SET", "grow", &mb]).await.unwrap(),
        R::Simple("OK".into())
    );
    c.cmd(&["MULTI"]).await.unwrap();
    c.cmd(&["APPEND", "grow", &mb]).await.unwrap();
    let r = c.cmd(&["EXEC"]).await.unwrap();
    assert!(
        matches!(&r, R::Err(e) if e.contains("request is too large")),
        "{r:?}"
    );
    assert_eq!(
        good.cmd(&["STRLEN", "grow"]).await.unwrap(),
        R::Int(1_000_000)
    );
    // The first connection never noticed.
    assert_eq!(good.cmd(&["GET", "k"]).await.unwrap(), R::bulk("v"));
    assert_eq!(good.cmd(&["PING"]).await.unwrap(), R::Simple("PONG".into()));
    // Many connections at once.
    let mut many = Vec::new();
    for _ in 0..200 {
        many.push(Conn::open(a).await.unwrap());
    }
    for c in &mut many {
        assert_eq!(c.cmd(&["PING"]).await.unwrap(), R::Simple("PONG".into()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_multi_exec_is_compare_and_swap() {
    let (_c, resp) = resp_cluster(1).await;
    let a = &resp[0];
    let mut c = Conn::open(a).await.unwrap();
    c.cmd(&["SET", "x", "10"]).await.unwrap();
    assert_eq!(
        c.cmd(&["WATCH", "x"]).await.unwrap(),
        R::Simple("OK".into())
    );
    assert_eq!(c.cmd(&["MULTI"]).await.unwrap(), R::Simple("OK".into()));
    assert_eq!(
        c.cmd(&["INCRBY", "x", "5"]).await.unwrap(),
        R::Simple("QUEUED".into())
    );
    assert_eq!(
        c.cmd(&["SET", "y", "z"]).await.unwrap(),
        R::Simple("QUEUED".into())
    );
    assert_eq!(
        c.cmd(&["GET", "x"]).await.unwrap(),
        R::Simple("QUEUED".into())
    );
    assert_eq!(
        c.cmd(&["EXEC"]).await.unwrap(),
        R::Array(vec![R::Int(15), R::Simple("OK".into()), R::bulk("15")])
    );
    // A watched key changed by another client: EXEC answers nil and
    // nothing is written.
    c.cmd(&["WATCH", "x"]).await.unwrap();
    assert_eq!(cmd(a, &["SET", "x", "0"]).await, R::Simple("OK".into()));
    c.cmd(&["MULTI"]).await.unwrap();
    c.cmd(&["SET", "y", "lost"]).await.unwrap();
    assert_eq!(c.cmd(&["EXEC"]).await.unwrap(), R::Nil);
    assert_eq!(cmd(a, &["GET", "y"]).await, R::bulk("z"));
    // A command that cannot be part of the txn aborts it.
    c.cmd(&["MULTI"]).await.unwrap();
    assert!(matches!(c.cmd(&["KEYS", "*"]).await.unwrap(), R::Err(_)));
    let r = c.cmd(&["EXEC"]).await.unwrap();
    assert!(
        matches!(&r, R::Err(e) if e.starts_with("EXECABORT")),
        "{r:?}"
    );
    // Multi-key commands and their atomic conditions.
    assert_eq!(cmd(a, &["MSETNX", "m1", "1", "m2", "2"]).await, R::Int(1));
    assert_eq!(cmd(a, &["MSETNX", "m2", "x", "m3", "3"]).await, R::Int(0));
    assert_eq!(cmd(a, &["EXISTS", "m1", "m2", "m3"]).await, R::Int(2));
    assert_eq!(cmd(a, &["DEL", "m1", "m2", "m3"]).await, R::Int(2));
    assert_eq!(
        cmd(a, &["FLUSHDB"]).await,
        R::Err(
            "ERR warden: FLUSHDB is refused: the key space is etcd's, shared with every other \
             client of the cluster, and one call would delete all of it; delete a prefix you own \
             instead (etcdctl del --prefix PREFIX)"
                .into()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_is_honoured_across_a_leader_kill() {
    let (mut c, resp) = resp_cluster(3).await;
    let leader = c.wait_leader(ELECT).await;
    let set_at = Instant::now();
    assert_eq!(
        cmd(&resp[leader], &["SET", "held", "v", "EX", "4"]).await,
        R::Simple("OK".into())
    );
    c.kill(leader);
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    // Until 4 s have passed, every answer that comes back has the key.
    let mut seen_gone = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        for i in &others {
            let Ok(mut conn) = Conn::open(&resp[*i]).await else {
                continue;
            };
            let answer = conn.cmd(&["GET", "held"]).await;
            // The read took effect before its answer came back.
            let answered = set_at.elapsed();
            match answer {
                Ok(R::Bulk(v)) => assert_eq!(v, b"v"),
                Ok(R::Nil) => {
                    assert!(
                        answered >= Duration::from_secs(4),
                        "the key expired early, {answered:?} after SET EX 4"
                    );
                    seen_gone = Some(answered);
                }
                // No leader yet: errors are fine, the answer is what counts.
                Ok(_) | Err(_) => {}
            }
        }
        if seen_gone.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen_gone.is_some(),
        "the key never expired after the leader kill"
    );
}

/// `AUTH` with warden's (etcd's) users: nothing without it once auth is on,
/// then the user's key permissions, exactly as over gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_uses_warden_users_and_permissions() {
    let ctl = require_etcdctl();
    let (c, resp) = resp_cluster_with(1, &["--bcrypt-cost", "4"]).await;
    let a = &resp[0];
    let eps = c.endpoints();
    // Before auth is on, AUTH says so as Redis does.
    let r = cmd(a, &["AUTH", "alice", "pw"]).await;
    assert!(
        matches!(&r, R::Err(e) if e.starts_with("ERR AUTH")),
        "{r:?}"
    );
    for args in [
        "user add root:rootpw",
        "role add root",
        "user grant-role root root",
        "role add app",
        "role grant-permission app readwrite app/ --prefix=true",
        "user add alice:alicepw",
        "user grant-role alice app",
        "auth enable",
    ] {
        let argv: Vec<&str> = args.split_whitespace().collect();
        let out = etcdctl(&ctl, &eps, &argv, None);
        assert!(out.success, "etcdctl {args}: {out:?}");
    }
    let mut conn = Conn::open(a).await.unwrap();
    assert_eq!(
        conn.cmd(&["GET", "app/x"]).await.unwrap(),
        R::Err("NOAUTH Authentication required.".into())
    );
    assert_eq!(
        conn.cmd(&["AUTH", "alice", "wrong"]).await.unwrap(),
        R::Err("WRONGPASS invalid username-password pair or user is disabled.".into())
    );
    assert_eq!(
        conn.cmd(&["AUTH", "alice", "alicepw"]).await.unwrap(),
        R::Simple("OK".into())
    );
    assert_eq!(
        conn.cmd(&["SET", "app/x", "1"]).await.unwrap(),
        R::Simple("OK".into())
    );
    assert_eq!(conn.cmd(&["INCR", "app/x"]).await.unwrap(), R::Int(2));
    let r = conn.cmd(&["SET", "secret", "1"]).await.unwrap();
    assert!(matches!(&r, R::Err(e) if e.starts_with("NOPERM")), "{r:?}");
    let r = conn.cmd(&["GET", "secret"]).await.unwrap();
    assert!(matches!(&r, R::Err(e) if e.starts_with("NOPERM")), "{r:?}");
    // HELLO 3 AUTH on a fresh connection.
    let mut c3 = Conn::open(a).await.unwrap();
    let r = c3
        .cmd(&["HELLO", "3", "AUTH", "alice", "alicepw"])
        .await
        .unwrap();
    assert!(matches!(r, R::Array(_)), "{r:?}");
    assert_eq!(c3.cmd(&["GET", "app/x"]).await.unwrap(), R::bulk("2"));
    // etcdctl as alice sees alice's RESP write.
    let out = etcdctl(
        &ctl,
        &eps,
        &["--user=alice:alicepw", "get", "app/x", "--print-value-only"],
        None,
    );
    assert!(out.success, "{out:?}");
    assert_eq!(out.stdout.trim(), "2");
}

/// The `redis` crate (a Redis client library as applications use it):
/// pipelined commands, RESP3 after `HELLO 3`, and errors it can read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_crate_pipelines_speaks_resp3_and_reads_errors() {
    let (_c, resp) = resp_cluster(1).await;
    let addr = resp[0].clone();
    tokio::task::spawn_blocking(move || {
        let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
        let mut con = client.get_connection().unwrap();
        // A pipeline: sent at once, answered in order.
        let (set, got, n, missing): (String, String, i64, Option<String>) = redis::pipe()
            .cmd("SET")
            .arg("crate/k")
            .arg("v1")
            .cmd("GET")
            .arg("crate/k")
            .cmd("INCRBY")
            .arg("crate/n")
            .arg(5)
            .cmd("GET")
            .arg("crate/none")
            .query(&mut con)
            .unwrap();
        assert_eq!(
            (set.as_str(), got.as_str(), n, missing),
            ("OK", "v1", 5, None)
        );
        // Errors come back as errors the library can tell apart.
        let e = redis::cmd("INCR")
            .arg("crate/k")
            .query::<i64>(&mut con)
            .unwrap_err();
        assert!(e.to_string().contains("not an integer"), "{e}");
        let e = redis::cmd("NOSUCHCMD").query::<()>(&mut con).unwrap_err();
        assert!(e.to_string().contains("unknown command"), "{e}");
        // RESP3: the client says HELLO 3 itself and reads maps and nulls.
        let client3 = redis::Client::open(format!("redis://{addr}/?protocol=resp3")).unwrap();
        let mut con3 = client3.get_connection().unwrap();
        let v: Option<String> = redis::cmd("GET")
            .arg("crate/none")
            .query(&mut con3)
            .unwrap();
        assert_eq!(v, None);
        let v: String = redis::cmd("GET").arg("crate/k").query(&mut con3).unwrap();
        assert_eq!(v, "v1");
        let hello: redis::Value = redis::cmd("HELLO").arg(3).query(&mut con3).unwrap();
        assert!(matches!(hello, redis::Value::Map(_)), "{hello:?}");
    })
    .await
    .unwrap();
}
