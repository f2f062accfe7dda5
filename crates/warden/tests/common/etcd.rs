//! The real etcd and etcdctl 3.4, for tests that compare warden's answers
//! with etcd's: locating them, running etcdctl, spawning a single-member
//! etcd on run-time ports.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::free_ports;

/// How long etcd may take to come up.
pub const UP: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Locating the tools
// ---------------------------------------------------------------------------

pub fn find_on_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// The real etcdctl, which must be 3.4 (the script relies on 3.4's output:
/// e.g. `endpoint health` prints to stderr, `get --count-only` does not exist).
pub fn require_etcdctl() -> PathBuf {
    let p = find_on_path("etcdctl").unwrap_or_else(|| {
        panic!("etcdctl not found on PATH: these compatibility tests need the real etcdctl 3.4 (Debian package `etcd-client`)")
    });
    let out = Command::new(&p)
        .arg("version")
        .env_remove("ETCDCTL_API")
        .output()
        .expect("run etcdctl version");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("etcdctl version: 3.4."),
        "{} is not etcdctl 3.4 (the script is written against 3.4's output):\n{text}",
        p.display()
    );
    p
}

pub fn require_etcd() -> PathBuf {
    find_on_path("etcd").unwrap_or_else(|| {
        panic!("etcd not found on PATH: these compatibility tests need the real etcd 3.4 server (Debian package `etcd-server`)")
    })
}

/// Removes every `ETCD*` variable (e.g. `ETCDCTL_ENDPOINTS`, `ETCD_DATA_DIR`)
/// from a child's environment so the caller's shell cannot redirect it.
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(k);
        }
    }
    cmd
}

// ---------------------------------------------------------------------------
// Running etcdctl
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Out {
    pub success: bool,
    pub stdout: String,
    /// stderr without clientv3's JSON log lines (`{"level":"warn",...}`).
    pub stderr: String,
}

impl Out {
    /// The last non-empty line of stderr: etcdctl's `Error: ...` line.
    pub fn err_line(&self) -> &str {
        self.stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
    }

    pub fn json(&self, what: &str) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "{what}: stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

pub fn etcdctl(ctl: &Path, endpoints: &str, args: &[&str], stdin: Option<&[u8]>) -> Out {
    let mut cmd = Command::new(ctl);
    clean_env(&mut cmd)
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=2s", "--command-timeout=10s"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn etcdctl");
    // Feed stdin from a thread so a large value cannot deadlock against the
    // child filling its stdout/stderr pipes.
    let feeder = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let out = child.wait_with_output().expect("wait for etcdctl");
    if let Some(f) = feeder {
        f.join().expect("stdin feeder");
    }
    let stderr = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("{\"level\":"))
        .collect::<Vec<_>>()
        .join("\n");
    Out {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    }
}

/// Runs `etcdctl endpoint health` until it succeeds; panics after `timeout`.
pub fn wait_healthy(
    ctl: &Path,
    endpoints: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<(), String>,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let out = etcdctl(
            ctl,
            endpoints,
            &["endpoint", "health", "--command-timeout=1s"],
            None,
        );
        if out.success {
            return;
        }
        if let Err(e) = alive() {
            panic!("{e}");
        }
        assert!(
            Instant::now() < deadline,
            "`etcdctl --endpoints={endpoints} endpoint health` not healthy within {timeout:?}:\n{}",
            out.stderr
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// The real etcd
// ---------------------------------------------------------------------------

pub struct Etcd {
    pub child: Child,
    /// `127.0.0.1:PORT`, the form given to `--endpoints`.
    pub client: String,
    pub peer: String,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Spawns a single-member etcd on fresh ports; see [`Etcd::wait_up`].
    pub fn spawn() -> Etcd {
        let bin = require_etcd();
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = free_ports(2);
        let client = format!("127.0.0.1:{}", ports[0]);
        let peer = format!("127.0.0.1:{}", ports[1]);
        let log = dir.path().join("etcd.log");
        let child = clean_env(&mut Command::new(bin))
            .args(["--name", "e1"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg(format!("--listen-client-urls=http://{client}"))
            .arg(format!("--advertise-client-urls=http://{client}"))
            .arg(format!("--listen-peer-urls=http://{peer}"))
            .arg(format!("--initial-advertise-peer-urls=http://{peer}"))
            .arg(format!("--initial-cluster=e1=http://{peer}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("etcd log file"))
            .spawn()
            .expect("spawn etcd");
        Etcd {
            child,
            client,
            peer,
            log,
            _dir: dir,
        }
    }

    pub fn wait_up(&mut self, ctl: &Path) {
        let (client, log) = (self.client.clone(), self.log.clone());
        let child = &mut self.child;
        wait_healthy(ctl, &client, UP, || match child.try_wait() {
            Ok(Some(status)) => Err(format!(
                "etcd exited with {status} before becoming healthy:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )),
            _ => Ok(()),
        });
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
