//! Compatibility with the real `etcdctl` (3.4): the same script of etcdctl
//! commands runs against a 3-member warden cluster and against a real
//! single-member etcd, and the outputs are compared field for field after
//! normalising what legitimately differs (cluster/member ids, raft terms,
//! endpoint strings, timings, db sizes, the version string).
//!
//! Both binaries must be installed (Debian packages `etcd-client` and
//! `etcd-server`); the tests panic if either is missing rather than pass
//! vacuously.
//!
//! Differences are collected over the whole script and reported together at
//! the end, so one divergence does not hide the next; the reference is always
//! what real etcd printed. Expectations about etcd's own output (revisions,
//! sort orders, ...) are checked as they come: if those fail, the script
//! itself is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::etcd::{etcdctl, require_etcdctl, wait_healthy, Etcd, Out, UP};
use common::Cluster;
use serde_json::Value;

const ELECT: Duration = Duration::from_secs(20);
/// How long a follower may take to apply what the leader committed.
const CATCH_UP: Duration = Duration::from_secs(10);

/// A fresh etcd and a fresh 3-member warden cluster, both up and healthy.
async fn start_both() -> (PathBuf, Etcd, Cluster) {
    let ctl = require_etcdctl();
    // etcd boots while warden elects.
    let mut etcd = Etcd::spawn();
    let cluster = Cluster::start(3);
    cluster.wait_leader(ELECT).await;
    etcd.wait_up(&ctl);
    wait_healthy(&ctl, &cluster.endpoints(), UP, || Ok(()));
    (ctl, etcd, cluster)
}

// ---------------------------------------------------------------------------
// Normalisation and comparison
// ---------------------------------------------------------------------------

/// Drops the response header fields that identify the cluster rather than the
/// data (`cluster_id`, `member_id`, `raft_term`); keeps `revision`. Only the
/// top-level header carries them: nested txn headers hold just a revision.
fn normalize(mut v: Value) -> Value {
    if let Some(h) = v.get_mut("header").and_then(Value::as_object_mut) {
        for k in ["cluster_id", "member_id", "raft_term"] {
            h.remove(k);
        }
    }
    v
}

/// Paths at which two JSON values differ (`<absent>` where one lacks a field).
fn json_diffs(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<String>) {
    let show = |v: Option<&Value>| v.map_or("<absent>".to_string(), |v| clip(&v.to_string(), 200));
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                json_diffs(&format!("{path}.{k}"), x.get(k), y.get(k), out);
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                json_diffs(&format!("{path}[{i}]"), Some(p), Some(q), out);
            }
        }
        _ if a == b => {}
        _ => out.push(format!("{path}: etcd {} | warden {}", show(a), show(b))),
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_string()
    } else {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…({} bytes)", &s[..end], s.len())
    }
}

/// Decodes etcd's base64 JSON byte strings.
fn b64(s: &str) -> String {
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHA
            .iter()
            .position(|a| *a == c)
            .unwrap_or_else(|| panic!("bad base64 {s:?}"));
        bits = (bits << 6) | v as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8(out).expect("utf-8 key/value")
}

/// The decoded keys of a range (or delete's prev_kvs) JSON response.
fn keys(v: &Value, field: &str) -> Vec<String> {
    v[field]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| b64(kv["key"].as_str().expect("key")))
                .collect()
        })
        .unwrap_or_default()
}

fn rev(v: &Value) -> i64 {
    v["header"]["revision"].as_i64().expect("header.revision")
}

/// Builds etcdctl 3.4's non-interactive txn input. Without `-i`, `etcdctl txn`
/// reads stdin line by line: the compares up to the first empty line, then
/// the success ops up to the next empty line, then the failure ops up to the
/// next one; each section must end with its empty line (EOF instead of the
/// last one is `Error: EOF`).
fn txn_input(compares: &[&str], success: &[&str], failure: &[&str]) -> String {
    let mut s = String::new();
    for section in [compares, success, failure] {
        for line in section {
            s.push_str(line);
            s.push('\n');
        }
        s.push('\n');
    }
    s
}

/// Runs each command against etcd and warden and records every difference.
struct Compat<'a> {
    ctl: &'a Path,
    etcd: String,
    warden: String,
    diffs: Vec<String>,
}

impl Compat<'_> {
    fn both(&self, args: &[&str], stdin: Option<&str>) -> (Out, Out) {
        let input = stdin.map(str::as_bytes);
        (
            etcdctl(self.ctl, &self.etcd, args, input),
            etcdctl(self.ctl, &self.warden, args, input),
        )
    }

    fn record(&mut self, args: &[&str], stdin: Option<&str>, what: String) {
        let mut cmd = format!("etcdctl {}", args.join(" "));
        if let Some(s) = stdin {
            cmd.push_str(&format!(" <<< {:?}", clip(s, 300)));
        }
        self.diffs.push(format!("{cmd}\n    {what}"));
    }

    /// Compares the simple (human) output: exit status, stdout, and the
    /// `Error:` line. Returns etcd's output.
    fn text(&mut self, args: &[&str], stdin: Option<&str>) -> Out {
        let (e, w) = self.both(args, stdin);
        if e.success != w.success || e.stdout != w.stdout || e.err_line() != w.err_line() {
            let what = format!(
                "etcd:   exit ok={} stdout={:?} error={:?}\n    warden: exit ok={} stdout={:?} error={:?}",
                e.success,
                clip(&e.stdout, 400),
                e.err_line(),
                w.success,
                clip(&w.stdout, 400),
                w.err_line()
            );
            self.record(args, stdin, what);
        }
        e
    }

    /// Runs `args -w json`, which must succeed on etcd, and compares the
    /// normalised JSON. Returns etcd's normalised JSON.
    fn json(&mut self, args: &[&str], stdin: Option<&str>) -> Value {
        let mut full = args.to_vec();
        full.extend(["-w", "json"]);
        let (e, w) = self.both(&full, stdin);
        assert!(e.success, "etcd failed `{}`: {}", full.join(" "), e.stderr);
        let ev = normalize(e.json("etcd"));
        if !w.success {
            let what = format!("etcd succeeded; warden failed: {}", w.err_line());
            self.record(&full, stdin, what);
            return ev;
        }
        let wv = match serde_json::from_str(&w.stdout) {
            Ok(v) => normalize(v),
            Err(err) => {
                let what = format!("warden printed no JSON ({err}): {}", clip(&w.stdout, 300));
                self.record(&full, stdin, what);
                return ev;
            }
        };
        let mut d = Vec::new();
        json_diffs("", Some(&ev), Some(&wv), &mut d);
        if !d.is_empty() {
            self.record(&full, stdin, d.join("\n    "));
        }
        ev
    }

    /// Both must fail; etcd with exactly `Error: {expected}`, warden with the
    /// same line.
    fn fails(&mut self, args: &[&str], stdin: Option<&str>, expected: &str) {
        let (e, w) = self.both(args, stdin);
        assert!(
            !e.success && e.err_line() == format!("Error: {expected}"),
            "etcd should fail `{}` with {expected:?}; got ok={} stdout={:?} stderr={:?}",
            args.join(" "),
            e.success,
            clip(&e.stdout, 300),
            e.stderr
        );
        if w.success || w.err_line() != e.err_line() {
            let what = format!(
                "etcd:   exit ok=false error={:?}\n    warden: exit ok={} error={:?} stdout={:?}",
                e.err_line(),
                w.success,
                w.err_line(),
                clip(&w.stdout, 200)
            );
            self.record(args, stdin, what);
        }
    }

    fn finish(self) {
        assert!(
            self.diffs.is_empty(),
            "warden's etcdctl output differs from real etcd's in {} place(s):\n\n{}\n",
            self.diffs.len(),
            self.diffs.join("\n\n")
        );
    }
}

// ---------------------------------------------------------------------------
// The KV script: put / get / del / txn / compaction / errors
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_script_matches_real_etcd() {
    let (ctl, etcd, cluster) = start_both().await;
    let mut c = Compat {
        ctl: &ctl,
        etcd: etcd.client.clone(),
        // All three members: etcdctl's balancer spreads commands over them,
        // so followers serve (and forward) too.
        warden: cluster.endpoints(),
        diffs: Vec::new(),
    };

    // --- put, --prev-kv ----------------------------------------------------
    let o = c.text(&["put", "foo", "bar"], None); // rev 2
    assert_eq!(o.stdout, "OK\n");
    let o = c.text(&["put", "foo", "baz", "--prev-kv"], None); // rev 3
    assert_eq!(o.stdout, "OK\nfoo\nbar\n");
    let v = c.json(&["put", "foo", "qux", "--prev-kv"], None); // rev 4
    assert_eq!(rev(&v), 4);
    assert_eq!(v["prev_kv"]["value"], "YmF6", "prev value baz");
    assert_eq!(
        (
            v["prev_kv"]["version"].as_i64(),
            v["prev_kv"]["mod_revision"].as_i64()
        ),
        (Some(2), Some(3))
    );
    let v = c.json(&["put", "fresh", "v", "--prev-kv"], None); // rev 5
    assert!(v.get("prev_kv").is_none(), "no prev_kv for a new key: {v}");
    c.fails(
        &["put", "nokey", "--ignore-value"],
        None,
        "etcdserver: key not found",
    );
    c.fails(&["put", "", "v"], None, "etcdserver: key is not provided");

    // --- sort fixtures: every sort target gives a different order ------------
    // key a<b<c; create c<a<b; mod b<a<c; version b(1)<c(2)<a(3); value c<b<a.
    for (k, val) in [
        ("s/c", "a0"),
        ("s/a", "c0"),
        ("s/b", "b"),
        ("s/a", "c1"),
        ("s/a", "c"),
        ("s/c", "a"),
    ] {
        c.text(&["put", k, val], None); // revs 6..=11
    }
    for (target, asc) in [
        ("KEY", ["s/a", "s/b", "s/c"]),
        ("CREATE", ["s/c", "s/a", "s/b"]),
        ("MODIFY", ["s/b", "s/a", "s/c"]),
        ("VERSION", ["s/b", "s/c", "s/a"]),
        ("VALUE", ["s/c", "s/b", "s/a"]),
    ] {
        let sort = format!("--sort-by={target}");
        let v = c.json(&["get", "s/", "--prefix", &sort, "--order=ASCEND"], None);
        assert_eq!(keys(&v, "kvs"), asc, "etcd ascending by {target}");
        let v = c.json(&["get", "s/", "--prefix", &sort, "--order=DESCEND"], None);
        let desc: Vec<&str> = asc.iter().rev().copied().collect();
        assert_eq!(keys(&v, "kvs"), desc, "etcd descending by {target}");
    }
    // --order alone sorts by key; sort then limit (etcd sorts the whole range).
    let o = c.text(&["get", "s/", "--prefix", "--order=DESCEND"], None);
    assert_eq!(o.stdout, "s/c\na\ns/b\nb\ns/a\nc\n");
    let v = c.json(
        &[
            "get",
            "s/",
            "--prefix",
            "--sort-by=MODIFY",
            "--order=DESCEND",
            "--limit=2",
        ],
        None,
    );
    assert_eq!(keys(&v, "kvs"), ["s/c", "s/a"]);
    assert_eq!(
        (v["more"].as_bool(), v["count"].as_i64()),
        (Some(true), Some(3))
    );
    c.text(&["get", "s/", "--prefix", "--sort-by=VALUE"], None);

    // --- get: prefix, ranges, from-key, limit, keys-only, rev ---------------
    for (k, val) in [
        ("r/1", "one"),
        ("r/2", "two"),
        ("r/3", "three"),
        ("r/4", "four"),
    ] {
        c.text(&["put", k, val], None); // revs 12..=15
    }
    let o = c.text(&["get", "r/", "--prefix"], None);
    assert_eq!(o.stdout, "r/1\none\nr/2\ntwo\nr/3\nthree\nr/4\nfour\n");
    let v = c.json(&["get", "r/", "--prefix"], None);
    assert_eq!((rev(&v), v["count"].as_i64()), (15, Some(4)));
    c.text(&["get", "r/2", "r/4"], None);
    let v = c.json(&["get", "r/2", "r/4"], None);
    assert_eq!(keys(&v, "kvs"), ["r/2", "r/3"]);
    c.text(&["get", "r/3", "--from-key"], None);
    let v = c.json(&["get", "r/3", "--from-key"], None);
    assert_eq!(keys(&v, "kvs"), ["r/3", "r/4", "s/a", "s/b", "s/c"]);
    let v = c.json(&["get", "r/", "--prefix", "--limit=2"], None);
    assert_eq!(keys(&v, "kvs"), ["r/1", "r/2"]);
    assert_eq!(
        (v["more"].as_bool(), v["count"].as_i64()),
        (Some(true), Some(4))
    );
    let v = c.json(&["get", "r/", "--prefix", "--limit=4"], None);
    assert!(v.get("more").is_none(), "limit == count is not more: {v}");
    let o = c.text(&["get", "r/", "--prefix", "--keys-only"], None);
    assert_eq!(o.stdout, "r/1\n\nr/2\n\nr/3\n\nr/4\n\n");
    let v = c.json(&["get", "r/", "--prefix", "--keys-only", "--limit=3"], None);
    assert!(
        v["kvs"][0].get("value").is_none(),
        "keys-only has no value: {v}"
    );
    let o = c.text(&["get", "r/", "--prefix", "--print-value-only"], None);
    assert_eq!(o.stdout, "one\ntwo\nthree\nfour\n");
    c.text(&["get", "", "--from-key", "--keys-only"], None);
    // History: at rev 13 only r/1 and r/2 existed; foo at rev 3 was "baz".
    let o = c.text(&["get", "r/", "--prefix", "--rev=13"], None);
    assert_eq!(o.stdout, "r/1\none\nr/2\ntwo\n");
    let v = c.json(&["get", "foo", "--rev=3"], None);
    assert_eq!((v["kvs"][0]["value"].as_str(), rev(&v)), (Some("YmF6"), 15));
    let v = c.json(
        &[
            "get",
            "r/",
            "--prefix",
            "--rev=13",
            "--limit=1",
            "--keys-only",
        ],
        None,
    );
    assert_eq!(
        (v["more"].as_bool(), v["count"].as_i64()),
        (Some(true), Some(2))
    );
    let o = c.text(&["get", "missing"], None);
    assert_eq!(o.stdout, "");
    let v = c.json(&["get", "missing"], None);
    assert!(v.get("kvs").is_none() && v.get("count").is_none(), "{v}");
    c.fails(
        &["get", "foo", "--rev=1000"],
        None,
        "etcdserver: mvcc: required revision is a future revision",
    );
    c.fails(&["get", ""], None, "etcdserver: key is not provided");

    // --- del: single, range, prefix, --prev-kv ------------------------------
    let o = c.text(&["del", "r/1", "r/3", "--prev-kv"], None); // rev 16
    assert_eq!(o.stdout, "2\nr/1\none\nr/2\ntwo\n");
    let o = c.text(&["del", "nosuch"], None);
    assert_eq!(o.stdout, "0\n");
    let v = c.json(&["del", "r/", "--prefix", "--prev-kv"], None); // rev 17
    assert_eq!((rev(&v), v["deleted"].as_i64()), (17, Some(2)));
    assert_eq!(keys(&v, "prev_kvs"), ["r/3", "r/4"]);
    let v = c.json(&["del", "fresh"], None); // rev 18
    assert_eq!((v["deleted"].as_i64(), v.get("prev_kvs")), (Some(1), None));
    let v = c.json(&["del", "r/", "--prefix"], None); // nothing left: no new revision
    assert_eq!((rev(&v), v.get("deleted")), (18, None));
    let v = c.json(&["get", "r/", "--prefix", "--rev=16"], None);
    assert_eq!(keys(&v, "kvs"), ["r/3", "r/4"]);

    // --- txn from stdin: both branches, compares on value/version/create/mod --
    let ok = txn_input(
        &[
            r#"value("foo") = "qux""#,
            r#"version("s/a") = "3""#,
            r#"create("s/c") < "7""#,
            r#"mod("s/b") > "0""#,
            r#"mod("foo") != "0""#,
        ],
        &["put t/1 yes", "get s/ --prefix --limit=1", "del nosuch"],
        &["put t/1 no"],
    );
    let o = c.text(&["txn"], Some(&ok)); // rev 19
    assert_eq!(o.stdout, "SUCCESS\n\nOK\n\ns/a\nc\n\n0\n");
    let v = c.json(&["txn"], Some(&ok)); // rev 20
    assert_eq!((v["succeeded"].as_bool(), rev(&v)), (Some(true), 20));
    let resps = v["responses"].as_array().expect("responses");
    assert_eq!(resps.len(), 3);
    assert_eq!(keys(&resps[1]["Response"]["ResponseRange"], "kvs"), ["s/a"]);
    assert_eq!(resps[1]["Response"]["ResponseRange"]["more"], true);

    let fail = txn_input(
        &[r#"value("foo") = "qux""#, r#"version("s/a") = "2""#],
        &["put t/1 yes"],
        &[
            "put t/2 fallback --prev-kv",
            "get t/ --prefix",
            "del t/1 --prev-kv",
        ],
    );
    let o = c.text(&["txn"], Some(&fail)); // rev 21
    assert_eq!(
        o.stdout,
        "FAILURE\n\nOK\n\nt/1\nyes\nt/2\nfallback\n\n1\nt/1\nyes\n"
    );
    let v = c.json(&["txn"], Some(&fail)); // rev 22
    assert!(v.get("succeeded").is_none(), "failed txn: {v}");
    assert_eq!(
        v["responses"][0]["Response"]["ResponsePut"]["prev_kv"]["value"],
        "ZmFsbGJhY2s="
    );
    assert_eq!(
        v["responses"][2]["Response"]["ResponseDeleteRange"].get("deleted"),
        None
    );

    // A compare on a missing key: version/create compare as 0, value never matches.
    let missing = txn_input(
        &[r#"version("nokey2") = "0""#, r#"create("nokey2") = "0""#],
        &["put t/m yes"],
        &["put t/m no"],
    );
    assert_eq!(c.text(&["txn"], Some(&missing)).stdout, "SUCCESS\n\nOK\n");
    let missing_value = txn_input(
        &[r#"value("nokey2") = """#],
        &["put t/v yes"],
        &["put t/v no"],
    );
    assert_eq!(
        c.text(&["txn"], Some(&missing_value)).stdout,
        "FAILURE\n\nOK\n"
    );
    // No compares: the success branch runs.
    let empty = txn_input(&[], &["put t/e x"], &[]);
    assert_eq!(c.text(&["txn"], Some(&empty)).stdout, "SUCCESS\n\nOK\n");
    c.json(&["get", "t/", "--prefix"], None);
    let dup = txn_input(&[], &["put d/1 a", "put d/1 b"], &[]);
    c.fails(
        &["txn"],
        Some(&dup),
        "etcdserver: duplicate key given in txn request",
    );

    // --- request size limit (1.5 MiB); values go through stdin because one
    // argv string is capped at 128 KiB on Linux --------------------------------
    let big = "x".repeat(1_600_000);
    c.fails(
        &["put", "big"],
        Some(&big),
        "etcdserver: request is too large",
    );
    let o = c.text(&["get", "big"], None);
    assert_eq!(o.stdout, "", "the rejected value was not stored");
    let fits = "y".repeat(1_000_000);
    c.text(&["put", "fits"], Some(&fits));
    let v = c.json(&["get", "fits"], None);
    assert_eq!(v["kvs"][0]["version"], 1);

    // --- compaction ----------------------------------------------------------
    let now = rev(&c.json(&["get", "foo"], None));
    for i in 0..3 {
        c.text(&["put", "cmp", &i.to_string()], None);
    }
    let first = now + 1; // cmp=0
    let o = c.text(&["compaction", &(first + 1).to_string()], None);
    assert_eq!(o.stdout, format!("compacted revision {}\n", first + 1));
    let compacted = "etcdserver: mvcc: required revision has been compacted";
    c.fails(&["get", "cmp", &format!("--rev={first}")], None, compacted);
    c.fails(&["get", "foo", "--rev=2"], None, compacted);
    let v = c.json(&["get", "cmp", &format!("--rev={}", first + 1)], None);
    assert_eq!(
        v["kvs"][0]["value"], "MQ==",
        "the compaction revision itself stays readable"
    );
    c.fails(&["compaction", &(first + 1).to_string()], None, compacted);
    c.fails(&["compaction", &first.to_string()], None, compacted);
    c.fails(
        &["compaction", &(first + 100).to_string()],
        None,
        "etcdserver: mvcc: required revision is a future revision",
    );
    let o = c.text(
        &["compaction", &(first + 2).to_string(), "--physical"],
        None,
    );
    assert_eq!(o.stdout, format!("compacted revision {}\n", first + 2));
    let full = c.json(&["get", "", "--from-key"], None);

    // --- serializable reads, on each member on its own ------------------------
    // A follower may apply the last write a heartbeat later: wait until the
    // member's serializable view reaches etcd's revision, then compare.
    let want = rev(&full);
    for m in &cluster.members {
        let deadline = Instant::now() + CATCH_UP;
        let args = ["get", "", "--from-key", "--consistency=s", "-w", "json"];
        let got = loop {
            let o = etcdctl(&ctl, &m.client, &args, None);
            if o.success {
                let v = normalize(o.json("warden serializable get"));
                if rev(&v) >= want {
                    break v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} did not reach revision {want}: {o:?}",
                m.name
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut d = Vec::new();
        json_diffs("", Some(&full), Some(&got), &mut d);
        if !d.is_empty() {
            c.diffs.push(format!(
                "etcdctl --endpoints={} {} (compared with etcd's linearizable read)\n    {}",
                m.client,
                args.join(" "),
                d.join("\n    ")
            ));
        }
    }
    let e = etcdctl(
        &ctl,
        &etcd.client,
        &["get", "", "--from-key", "--consistency=s", "-w", "json"],
        None,
    );
    assert_eq!(
        normalize(e.json("etcd serializable get")),
        full,
        "etcd's serializable read"
    );

    c.finish();
}

// ---------------------------------------------------------------------------
// endpoint status / endpoint health / member list
// ---------------------------------------------------------------------------

/// Cells of each `|`-delimited row of a `-w table` output; the first is the header.
fn table_rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

fn json_keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn ok(out: Out, what: &str) -> Out {
    assert!(
        out.success,
        "{what} failed:\nstdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_commands_match_real_etcd() {
    let (ctl, etcd, cluster) = start_both().await;
    let ctl = ctl.as_path();
    let ends = cluster.endpoints();
    let clients: BTreeSet<String> = cluster.members.iter().map(|m| m.client.clone()).collect();
    let mut diffs: Vec<String> = Vec::new();

    // --- endpoint status: JSON ---------------------------------------------
    let est = ok(
        etcdctl(
            ctl,
            &etcd.client,
            &["endpoint", "status", "-w", "json"],
            None,
        ),
        "etcd status",
    )
    .json("etcd status");
    let est = &est[0];
    assert_eq!(est["Endpoint"], etcd.client.as_str());
    assert_eq!(
        est["Status"]["leader"], est["Status"]["header"]["member_id"],
        "etcd leads itself"
    );
    // Wait until the members agree on one leader and one revision.
    let deadline = Instant::now() + CATCH_UP;
    let wst = loop {
        let o = etcdctl(ctl, &ends, &["endpoint", "status", "-w", "json"], None);
        if o.success {
            let v = o.json("warden status");
            let all = v.as_array().expect("status array").clone();
            let leaders: BTreeSet<String> = all
                .iter()
                .map(|s| s["Status"]["leader"].to_string())
                .collect();
            let revs: BTreeSet<String> = all
                .iter()
                .map(|s| s["Status"]["header"]["revision"].to_string())
                .collect();
            // A leader elected a moment ago may still report a link to a
            // peer that was not listening yet when it asked for votes, until
            // its first heartbeat there answers: wait for that too.
            let settled = all.iter().all(|s| s["Status"].get("errors").is_none());
            if all.len() == 3 && leaders.len() == 1 && revs.len() == 1 && settled {
                break all;
            }
        }
        assert!(
            Instant::now() < deadline,
            "members never agreed on leader and revision with no link errors: {o:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let endpoints: BTreeSet<String> = wst
        .iter()
        .map(|s| s["Endpoint"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(endpoints, clients);
    let ids: BTreeSet<u64> = wst
        .iter()
        .map(|s| s["Status"]["header"]["member_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "distinct member ids: {wst:?}");
    let leader = wst[0]["Status"]["leader"].as_u64().expect("leader id");
    assert!(
        ids.contains(&leader),
        "leader {leader:x} is one of the members {ids:x?}"
    );
    for s in &wst {
        let st = &s["Status"];
        // Same fields as etcd reports (no errors, not a learner: both omitted).
        if json_keys(st) != json_keys(&est["Status"]) {
            diffs.push(format!(
                "etcdctl endpoint status -w json: Status fields differ: etcd {:?} | warden {:?}",
                json_keys(&est["Status"]),
                json_keys(st)
            ));
        }
        // Nothing was written on either side yet: both at revision 1.
        if st["header"]["revision"] != est["Status"]["header"]["revision"] {
            diffs.push(format!(
                "etcdctl endpoint status -w json: header.revision etcd {} | warden {} on {}",
                est["Status"]["header"]["revision"], st["header"]["revision"], s["Endpoint"]
            ));
        }
        assert!(st["raftTerm"].as_u64().unwrap_or(0) >= 1, "raftTerm: {st}");
        assert!(
            st["raftIndex"].as_u64().unwrap_or(0) >= 1,
            "raftIndex: {st}"
        );
        assert!(
            st["raftAppliedIndex"].as_u64() <= st["raftIndex"].as_u64(),
            "applied <= index: {st}"
        );
        assert!(st["dbSize"].as_u64().unwrap_or(0) > 0, "dbSize: {st}");
        assert!(
            !st["version"].as_str().unwrap_or("").is_empty(),
            "version: {st}"
        );
    }

    // --- endpoint status: table and simple -----------------------------------
    let etable = table_rows(
        &ok(
            etcdctl(
                ctl,
                &etcd.client,
                &["endpoint", "status", "-w", "table"],
                None,
            ),
            "etcd table",
        )
        .stdout,
    );
    assert_eq!(
        etable[0],
        [
            "ENDPOINT",
            "ID",
            "VERSION",
            "DB SIZE",
            "IS LEADER",
            "IS LEARNER",
            "RAFT TERM",
            "RAFT INDEX",
            "RAFT APPLIED INDEX",
            "ERRORS"
        ]
    );
    let deadline = Instant::now() + CATCH_UP;
    let wtable = loop {
        let rows = table_rows(
            &ok(
                etcdctl(ctl, &ends, &["endpoint", "status", "-w", "table"], None),
                "warden table",
            )
            .stdout,
        );
        // A re-election between two commands could briefly show no leader,
        // and on a loaded machine a peer link's first dial can time out, which
        // a member reports in ERRORS (extra wrapped rows) until it connects.
        let one_leader = rows
            .iter()
            .skip(1)
            .filter(|r| r.get(4).map(String::as_str) == Some("true"))
            .count()
            == 1;
        if (one_leader && rows.len() == 4) || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        wtable[0], etable[0],
        "warden's status table has etcd's columns"
    );
    assert_eq!(wtable.len(), 4, "header + 3 members: {wtable:?}");
    let rows = &wtable[1..];
    let leaders: Vec<&Vec<String>> = rows.iter().filter(|r| r[4] == "true").collect();
    assert_eq!(leaders.len(), 1, "exactly one IS LEADER=true: {wtable:?}");
    assert_eq!(
        leaders[0][1],
        format!("{leader:x}"),
        "the leader row's ID is the leader's"
    );
    for r in rows {
        assert_eq!(r.len(), etable[1].len(), "{r:?}");
        assert!(r[4] == "true" || r[4] == "false", "{r:?}");
        assert_eq!(r[5], "false", "IS LEARNER: {r:?}");
        assert_eq!(r[9], "", "ERRORS: {r:?}");
        let id = u64::from_str_radix(&r[1], 16).unwrap_or_else(|_| panic!("hex ID: {r:?}"));
        assert!(ids.contains(&id), "{r:?}");
    }
    let table_eps: BTreeSet<String> = rows.iter().map(|r| r[0].clone()).collect();
    assert_eq!(table_eps, clients);
    let esimple = ok(
        etcdctl(ctl, &etcd.client, &["endpoint", "status"], None),
        "etcd simple",
    )
    .stdout;
    let wsimple = ok(
        etcdctl(ctl, &ends, &["endpoint", "status"], None),
        "warden simple",
    )
    .stdout;
    let fields = |l: &str| l.split(", ").count();
    assert_eq!(esimple.lines().count(), 1);
    assert_eq!(wsimple.lines().count(), 3, "{wsimple}");
    for l in wsimple.lines() {
        assert_eq!(
            fields(l),
            fields(esimple.lines().next().unwrap()),
            "{l:?} vs etcd {esimple:?}"
        );
    }
    // `endpoint status --cluster` is not compared: etcdctl 3.4 dials each
    // member URL with `:authority` set to the whole URL (`http://host:port`),
    // which Go's HTTP/2 server tolerates and hyper's (RFC 7540) refuses with
    // PROTOCOL_ERROR. Documented in docs/compatibility.md; `health --cluster`
    // below reaches every member by its client URL.
    let want: BTreeSet<String> = clients.iter().map(|c| format!("http://{c}")).collect();

    // --- endpoint health -------------------------------------------------------
    let eh = ok(
        etcdctl(
            ctl,
            &etcd.client,
            &["endpoint", "health", "-w", "json"],
            None,
        ),
        "etcd health",
    )
    .json("etcd health");
    let wh = ok(
        etcdctl(ctl, &ends, &["endpoint", "health", "-w", "json"], None),
        "warden health",
    )
    .json("warden health");
    let wh = wh.as_array().expect("health array");
    assert_eq!(wh.len(), 3);
    let healthy: BTreeSet<String> = wh
        .iter()
        .filter(|h| h["health"] == true)
        .map(|h| h["endpoint"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(healthy, clients, "every member healthy: {wh:?}");
    for h in wh {
        assert_eq!(
            json_keys(h),
            json_keys(&eh[0]),
            "health fields: {h} vs etcd {}",
            eh[0]
        );
    }
    // etcdctl 3.4 prints the simple health report on stderr.
    let shape = |line: &str, ep: &str| {
        line.replacen(ep, "EP", 1)
            .split(" took = ")
            .next()
            .unwrap()
            .to_string()
    };
    let e = ok(
        etcdctl(ctl, &etcd.client, &["endpoint", "health"], None),
        "etcd simple health",
    );
    let eshape = shape(e.stderr.trim(), &etcd.client);
    assert_eq!(eshape, "EP is healthy: successfully committed proposal:");
    let w = ok(
        etcdctl(ctl, &ends, &["endpoint", "health"], None),
        "warden simple health",
    );
    let mut seen = BTreeSet::new();
    for l in w.stderr.lines() {
        let ep = l.split(' ').next().unwrap().to_string();
        assert_eq!(shape(l, &ep), eshape, "{l:?}");
        seen.insert(ep);
    }
    assert_eq!(seen, clients);
    // Each member's client URL reaches the member list once it has
    // published it through the log, and a health probe can time out on a
    // loaded machine: ask until every member answers, within a deadline.
    let deadline = Instant::now() + CATCH_UP;
    let healthy = loop {
        let w = ok(
            etcdctl(
                ctl,
                &cluster.members[1].client,
                &["endpoint", "health", "--cluster", "-w", "json"],
                None,
            ),
            "health --cluster",
        );
        let healthy: BTreeSet<String> = w
            .json("health --cluster")
            .as_array()
            .expect("health array")
            .iter()
            .filter(|h| h["health"] == true)
            .map(|h| h["endpoint"].as_str().unwrap().to_string())
            .collect();
        if healthy == want || Instant::now() > deadline {
            break healthy;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        healthy, want,
        "health --cluster reaches every member by its client URL"
    );

    // --- member list -------------------------------------------------------------
    let em = ok(
        etcdctl(ctl, &etcd.client, &["member", "list", "-w", "json"], None),
        "etcd members",
    )
    .json("etcd members");
    let em0 = &em["members"][0];
    assert_eq!(
        (em0["name"].as_str(), em0["peerURLs"][0].as_str()),
        (Some("e1"), Some(format!("http://{}", etcd.peer).as_str()))
    );
    let wm = ok(
        etcdctl(ctl, &ends, &["member", "list", "-w", "json"], None),
        "warden members",
    )
    .json("warden members");
    let members = wm["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{wm}");
    let mut listed_ids = BTreeSet::new();
    for m in &cluster.members {
        let e = members
            .iter()
            .find(|x| x["name"] == m.name.as_str())
            .unwrap_or_else(|| panic!("member {} missing from {wm}", m.name));
        assert_eq!(
            json_keys(e),
            json_keys(em0),
            "member fields: {e} vs etcd {em0}"
        );
        assert_eq!(
            e["peerURLs"],
            serde_json::json!([format!("http://{}", m.peer)]),
            "{e}"
        );
        assert_eq!(
            e["clientURLs"],
            serde_json::json!([format!("http://{}", m.client)]),
            "{e}"
        );
        listed_ids.insert(e["ID"].as_u64().expect("ID"));
    }
    assert_eq!(
        listed_ids, ids,
        "member list IDs are the ids members report in status"
    );
    if wm["header"].get("revision").is_some() != em["header"].get("revision").is_some() {
        diffs.push(format!(
            "etcdctl member list -w json: header.revision etcd {} | warden {}",
            em["header"]
                .get("revision")
                .map_or("<absent>".into(), |r| r.to_string()),
            wm["header"]
                .get("revision")
                .map_or("<absent>".into(), |r| r.to_string())
        ));
    }
    // Simple and table forms: one line per member, etcd's columns.
    let e = ok(
        etcdctl(ctl, &etcd.client, &["member", "list"], None),
        "etcd simple members",
    )
    .stdout;
    assert_eq!(
        e,
        format!(
            "{:x}, started, e1, http://{}, http://{}, false\n",
            em0["ID"].as_u64().unwrap(),
            etcd.peer,
            etcd.client
        )
    );
    let w = ok(
        etcdctl(ctl, &ends, &["member", "list"], None),
        "warden simple members",
    )
    .stdout;
    let mut want_lines: Vec<String> = members
        .iter()
        .map(|x| {
            let m = cluster
                .members
                .iter()
                .find(|m| x["name"] == m.name.as_str())
                .unwrap();
            format!(
                "{:x}, started, {}, http://{}, http://{}, false",
                x["ID"].as_u64().unwrap(),
                m.name,
                m.peer,
                m.client
            )
        })
        .collect();
    let mut got_lines: Vec<String> = w.lines().map(String::from).collect();
    want_lines.sort();
    got_lines.sort();
    assert_eq!(got_lines, want_lines);
    let et = table_rows(
        &ok(
            etcdctl(ctl, &etcd.client, &["member", "list", "-w", "table"], None),
            "etcd member table",
        )
        .stdout,
    );
    let wt = table_rows(
        &ok(
            etcdctl(ctl, &ends, &["member", "list", "-w", "table"], None),
            "warden member table",
        )
        .stdout,
    );
    assert_eq!(
        et[0],
        [
            "ID",
            "STATUS",
            "NAME",
            "PEER ADDRS",
            "CLIENT ADDRS",
            "IS LEARNER"
        ]
    );
    assert_eq!(wt[0], et[0]);
    assert_eq!(wt.len(), 4, "{wt:?}");

    assert!(
        diffs.is_empty(),
        "warden's etcdctl output differs from real etcd's in {} place(s):\n\n{}\n",
        diffs.len(),
        diffs.join("\n\n")
    );
}
