//! The short chaos profile (docs/testing.md): `warden-chaos` drives a real
//! 3-member cluster with every workload while every nemesis strikes at
//! least once, with a fixed seed, and must find no violation. It runs with
//! TLS on both ports (client certificates required, mutual TLS between
//! members, peer traffic through the partitioning proxies) and etcd auth on
//! (every workload client authenticates and every request is checked
//! against its role), as a production cluster would; the other runs are
//! plaintext without auth. A second run
//! turns on the harness's deliberate client-side fault (linearizable reads
//! served as serializable reads by followers) and must be caught, and so
//! must a third with counter increments sent twice.
//!
//! The short profile includes the counter workload: exactly-once
//! increments through `warden-client` (tagged writes the library retries
//! after a failure of unknown outcome), checked for duplicates and lost
//! acknowledged increments.
//!
//! No timing assertions: on a loaded machine the runs only get fewer
//! operations, never a different verdict.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;

const CHAOS: &str = env!("CARGO_BIN_EXE_warden-chaos");

/// The `warden` binary, built next to `warden-chaos` by `cargo test
/// --workspace` (a test can only name binaries of its own package).
fn warden_bin() -> std::path::PathBuf {
    let bin = Path::new(CHAOS).with_file_name(format!("warden{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} not found: run `cargo test --workspace` or `cargo build -p warden` first",
        bin.display()
    );
    bin
}

/// One cluster at a time: the machine may have two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn chaos(out: &Path, args: &[&str]) -> Output {
    let output = Command::new(CHAOS)
        .arg("--warden-bin")
        .arg(warden_bin())
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .expect("run warden-chaos");
    println!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    output
}

#[test]
fn short_profile_finds_no_violation() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    // Snapshot often, so members are killed and restarted across log
    // purges and snapshot installs too.
    let out = chaos(
        dir.path(),
        &[
            "--members",
            "3",
            "--duration",
            "100",
            "--seed",
            "20260501",
            "--snapshot-entries",
            "500",
            "--tls",
            "--auth",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the short profile found violations or failed"
    );
    assert!(
        dir.path().join("certs").join("ca.pem").is_file(),
        "not run over TLS"
    );
    assert!(stdout.contains("RESULT: 0 violation(s)"), "{stdout}");
    for checker in [
        "cluster: ok",
        "register: ok",
        "bank: ok",
        "lock: ok",
        "watch: ok",
        "counter: ok",
    ] {
        assert!(stdout.contains(checker), "missing {checker:?}");
    }
    for nemesis in [
        "kill-leader×",
        "kill-member×",
        "kill-all×",
        "pause-leader×",
        "pause-member×",
        "partition-leader×",
        "partition-halves×",
    ] {
        assert!(stdout.contains(nemesis), "nemesis {nemesis} did not run");
    }
    let history = std::fs::read_to_string(dir.path().join("history.jsonl")).expect("history");
    assert!(history.lines().count() > 100, "too few operations recorded");
}

/// Runs `workload` on three members with `fault` injected into the
/// harness, and asserts its checker caught it: the run fails with a
/// violation reported under the workload's name. Returns what it printed.
fn caught(workload: &str, nemeses: &str, duration: &str, seed: &str, fault: &str) -> String {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = chaos(
        dir.path(),
        &[
            "--members",
            "3",
            "--duration",
            duration,
            "--seed",
            seed,
            "--workloads",
            workload,
            "--nemeses",
            nemeses,
            "--fault",
            fault,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "the fault went unnoticed");
    assert!(stdout.contains(&format!("{workload}: ")), "{stdout}");
    assert!(stdout.contains("VIOLATION"), "{stdout}");
    stdout
}

#[test]
fn stale_reads_fault_is_caught() {
    // Partitions leave a follower behind while the others write, so its
    // local reads are stale for sure, not just when replication happens to
    // lag.
    let stdout = caught(
        "register",
        "partition-halves,partition-leader",
        "25",
        "20260502",
        "stale-reads",
    );
    assert!(stdout.contains("is not linearizable"), "{stdout}");
    assert!(
        stdout.contains("\"fault\":true"),
        "the window shows the faulty reads"
    );
}

/// The harness sends every tenth acknowledged counter increment again as
/// a new untagged write: the counter checker must see those applied twice.
#[test]
fn duplicate_increments_fault_is_caught() {
    let stdout = caught("counter", "none", "10", "20260503", "duplicate-increments");
    assert!(stdout.contains("times: its marker"), "{stdout}");
}

/// Snapshots every 300 entries and log purges while members are killed and
/// restarted: every member must come back on its data directory.
///
/// Regression for the bug it found (docs/testing.md, "Findings"):
/// `LogStore::purge` stored `Some(log_id)` but `get_log_state` decoded a
/// bare `LogId`, so a member restarted after its first log purge read a
/// garbage purge point and refused to start.
#[test]
fn members_restart_after_snapshots_and_purges() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = chaos(
        dir.path(),
        &[
            "--members",
            "3",
            "--duration",
            "40",
            "--seed",
            "3",
            "--workloads",
            "register,watch",
            "--nemeses",
            "kill-member,kill-leader",
            "--snapshot-entries",
            "300",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
}
