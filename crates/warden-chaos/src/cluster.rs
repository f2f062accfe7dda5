//! The cluster under test: real `warden server` child processes on ports
//! picked at run time, each with a data directory under a temporary
//! directory, that the nemesis kills (SIGKILL), restarts on the same data
//! directory, pauses (SIGSTOP) and resumes (SIGCONT), and whose peer links
//! may run through [`Proxies`].
//!
//! Only ever signals processes it started itself, by their pid.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

use super::workload::Topology;
use warden_testkit::leader;
use warden_testkit::ports::free_ports;
use warden_testkit::proxy::Proxies;

/// Server timing flags.
#[derive(Clone, Debug)]
pub struct ServerTiming {
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    pub heartbeat_ms: u64,
    pub request_timeout_ms: u64,
    pub snapshot_entries: Option<u64>,
}

struct MemberProc {
    name: String,
    client_addr: String,
    peer_addr: String,
    initial_cluster: String,
    /// `--peer-routes` through the partition proxies, if any.
    peer_routes: Option<String>,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// Set once the member was removed and re-added: it starts with
    /// `--join` through these client addresses (ignored by the server once
    /// its data dir knows its membership).
    join: Option<String>,
}

/// A running cluster.
pub struct ChaosCluster {
    bin: PathBuf,
    timing: ServerTiming,
    members: Vec<MemberProc>,
    proxies: Option<Proxies>,
    pub topo: Arc<Topology>,
    /// Members that exited without being killed: "name: status".
    pub crashes: Vec<String>,
    /// TLS flags every member gets (empty: plaintext).
    server_flags: Vec<String>,
    /// How clients reach the members, with TLS.
    pub client_tls: Option<warden_client::TlsOptions>,
}

/// Runs `warden certs DIR` and returns the members' TLS flags (both ports,
/// client certificates required) and the clients' TLS options.
fn make_certs(
    bin: &Path,
    dir: &Path,
) -> anyhow::Result<(Vec<String>, Option<warden_client::TlsOptions>)> {
    let out = Command::new(bin)
        .arg("certs")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {} certs", bin.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "warden certs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let f = |name: &str| dir.join(name).display().to_string();
    let flags = vec![
        "--cert-file".into(),
        f("server.pem"),
        "--key-file".into(),
        f("server-key.pem"),
        "--trusted-ca-file".into(),
        f("ca.pem"),
        "--client-cert-auth".into(),
        "--peer-cert-file".into(),
        f("server.pem"),
        "--peer-key-file".into(),
        f("server-key.pem"),
        "--peer-trusted-ca-file".into(),
        f("ca.pem"),
        "--peer-client-cert-auth".into(),
    ];
    let client = warden_client::TlsOptions {
        ca: Some(dir.join("ca.pem")),
        cert: Some(dir.join("client.pem")),
        key: Some(dir.join("client-key.pem")),
    };
    Ok((flags, Some(client)))
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("run kill")?;
    if !status.success() {
        anyhow::bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

/// How clients reach the members: TLS on both ports, etcd auth on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Access {
    pub tls: bool,
    pub auth: bool,
}

impl ChaosCluster {
    /// Starts `n` members with data in `data/nI` and logs in `dir/logs`;
    /// with `proxied`, peer traffic goes through per-link proxies.
    pub async fn start(
        bin: &Path,
        n: usize,
        dir: &Path,
        data: &Path,
        timing: ServerTiming,
        proxied: bool,
        access: Access,
    ) -> anyhow::Result<ChaosCluster> {
        let Access { tls, auth } = access;
        if !bin.exists() {
            anyhow::bail!(
                "warden binary {} not found (build it, or pass --warden-bin)",
                bin.display()
            );
        }
        std::fs::create_dir_all(data)?;
        std::fs::create_dir_all(dir.join("logs"))?;
        let ports = free_ports(2 * n)?;
        let names: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let client_addrs: Vec<String> = (0..n)
            .map(|i| format!("127.0.0.1:{}", ports[2 * i]))
            .collect();
        let peer_addrs: Vec<String> = (0..n)
            .map(|i| format!("127.0.0.1:{}", ports[2 * i + 1]))
            .collect();
        let proxies = if proxied {
            Some(Proxies::start(&peer_addrs).await?)
        } else {
            None
        };
        let mut members = Vec::new();
        // Every member gets the same --initial-cluster (so one cluster id);
        // with proxies, its --peer-routes send its traffic for peer j
        // through the i -> j link proxy instead.
        let initial = (0..n)
            .map(|j| format!("{}={}", names[j], peer_addrs[j]))
            .collect::<Vec<_>>()
            .join(",");
        for i in 0..n {
            let routes = proxies.as_ref().map(|p| p.routes(i, &peer_addrs));
            members.push(MemberProc {
                name: names[i].clone(),
                client_addr: client_addrs[i].clone(),
                peer_addr: peer_addrs[i].clone(),
                initial_cluster: initial.clone(),
                peer_routes: routes,
                dir: data.join(&names[i]),
                log: dir.join("logs").join(format!("{}.log", names[i])),
                child: None,
                paused: false,
                join: None,
            });
        }
        let (mut server_flags, client_tls) = if tls {
            make_certs(bin, &dir.join("certs"))?
        } else {
            (Vec::new(), None)
        };
        if auth {
            // The cheapest bcrypt cost: the harness authenticates a client
            // per workload process, and hashing is not what is under test.
            server_flags.extend(["--bcrypt-cost".to_owned(), "4".to_owned()]);
        }
        let topo = Arc::new(Topology::new(names, client_addrs, client_tls.clone())?);
        let mut c = ChaosCluster {
            bin: bin.to_path_buf(),
            timing,
            members,
            proxies,
            topo,
            crashes: Vec::new(),
            server_flags,
            client_tls,
        };
        for i in 0..n {
            c.restart(i)?;
        }
        Ok(c)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn name(&self, i: usize) -> String {
        self.members
            .get(i)
            .map_or_else(String::new, |m| m.name.clone())
    }

    pub fn proxied(&self) -> bool {
        self.proxies.is_some()
    }

    /// (Re)starts member `i` on its data directory (no-op if running).
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let t = self.timing.clone();
        let bin = self.bin.clone();
        let m = self
            .members
            .get_mut(i)
            .ok_or_else(|| anyhow::anyhow!("no member {i}"))?;
        if m.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .with_context(|| format!("open {}", m.log.display()))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("server")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.dir)
            .args(["--client-addr", &m.client_addr])
            .args(["--peer-addr", &m.peer_addr]);
        match &m.join {
            Some(j) => cmd.args(["--join", j]),
            None => cmd.args(["--initial-cluster", &m.initial_cluster]),
        };
        if let Some(r) = &m.peer_routes {
            cmd.args(["--peer-routes", r]);
        }
        cmd.args(["--election-timeout-min-ms", &t.election_min_ms.to_string()])
            .args(["--election-timeout-max-ms", &t.election_max_ms.to_string()])
            .args(["--heartbeat-interval-ms", &t.heartbeat_ms.to_string()])
            .args(["--request-timeout-ms", &t.request_timeout_ms.to_string()]);
        if let Some(s) = t.snapshot_entries {
            cmd.args(["--snapshot-entries", &s.to_string()]);
        }
        cmd.args(&self.server_flags);
        let child = cmd
            .env("WARDEN_LOG", "info,openraft=warn")
            .env("WARDEN_WATCH_PROGRESS_INTERVAL_MS", "1000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        m.child = Some(child);
        m.paused = false;
        Ok(())
    }

    /// Membership change under load: removes member `i` from the cluster
    /// (`MemberRemove` through another member), kills it and wipes its data;
    /// the next restart re-adds it with `--join` (as a learner that catches
    /// up by snapshot and is promoted).
    pub async fn replace(&mut self, i: usize) -> anyhow::Result<()> {
        use warden_proto::etcdserverpb::{
            cluster_client::ClusterClient, MemberListRequest, MemberRemoveRequest,
        };
        let name = self.name(i);
        let via = (0..self.len())
            .find(|j| *j != i)
            .ok_or_else(|| anyhow::anyhow!("no other member to ask"))?;
        let ch = self
            .topo
            .channels
            .get(via)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no channel to member {via}"))?;
        let list = tokio::time::timeout(
            Duration::from_secs(10),
            ClusterClient::new(ch.clone()).member_list(MemberListRequest { linearizable: true }),
        )
        .await
        .context("member list timed out")??
        .into_inner();
        let id = list
            .members
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.id)
            .ok_or_else(|| anyhow::anyhow!("{name} is not in the member list"))?;
        tokio::time::timeout(
            Duration::from_secs(15),
            ClusterClient::new(ch).member_remove(MemberRemoveRequest { id }),
        )
        .await
        .context("member remove timed out")??;
        self.kill(i);
        let others: Vec<String> = self
            .members
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, m)| m.client_addr.clone())
            .collect();
        let m = self
            .members
            .get_mut(i)
            .ok_or_else(|| anyhow::anyhow!("no member {i}"))?;
        if m.dir.exists() {
            std::fs::remove_dir_all(&m.dir)
                .with_context(|| format!("wiping {}", m.dir.display()))?;
        }
        m.join = Some(others.join(","));
        Ok(())
    }

    /// SIGKILL member `i` (resuming it first does not matter to SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(m) = self.members.get_mut(i) {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            m.paused = false;
        }
    }

    /// SIGSTOP member `i`.
    pub fn pause(&mut self, i: usize) -> anyhow::Result<()> {
        let m = self
            .members
            .get_mut(i)
            .ok_or_else(|| anyhow::anyhow!("no member {i}"))?;
        if let Some(c) = &m.child {
            signal(c.id(), "STOP")?;
            m.paused = true;
        }
        Ok(())
    }

    /// SIGCONT member `i`.
    pub fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        let m = self
            .members
            .get_mut(i)
            .ok_or_else(|| anyhow::anyhow!("no member {i}"))?;
        if let (Some(c), true) = (&m.child, m.paused) {
            signal(c.id(), "CONT")?;
        }
        m.paused = false;
        Ok(())
    }

    /// Cuts the peer links between the groups.
    pub fn partition(&self, groups: &[Vec<usize>]) {
        if let Some(p) = &self.proxies {
            p.partition(groups);
        }
    }

    /// Undoes every fault: heals the network, resumes paused members and
    /// restarts dead ones.
    pub fn heal_all(&mut self) -> anyhow::Result<()> {
        self.reap();
        if let Some(p) = &self.proxies {
            p.heal();
        }
        for i in 0..self.members.len() {
            self.resume(i)?;
            self.restart(i)?;
        }
        Ok(())
    }

    /// Notes members whose process exited on its own (a crash) in
    /// [`ChaosCluster::crashes`], with the last line of their log, so they
    /// can be restarted.
    pub fn reap(&mut self) {
        let mut found = Vec::new();
        for (i, m) in self.members.iter_mut().enumerate() {
            if let Some(c) = &mut m.child {
                if let Ok(Some(status)) = c.try_wait() {
                    found.push((i, status.to_string()));
                    m.child = None;
                    m.paused = false;
                }
            }
        }
        for (i, status) in found {
            let last = self.log_tail(i, 1);
            let last = strip_ansi(&last);
            self.crashes.push(format!(
                "{} exited by itself ({status}): {}",
                self.name(i),
                last.trim()
            ));
        }
    }

    /// The last lines of member `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let Some(m) = self.members.get(i) else {
            return String::new();
        };
        let text = std::fs::read_to_string(&m.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.members
            .get(i)
            .is_some_and(|m| m.child.is_some() && !m.paused)
    }

    /// Kills every member.
    pub fn shutdown(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

impl Drop for ChaosCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `s` without terminal colour codes (the members' logs have them).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Asks every member for its status once; learns member ids and returns
/// the leader that a member reporting itself as leader confirms (highest
/// term wins).
pub async fn poll_leader(topo: &Topology) -> Option<usize> {
    let views = leader::views(&topo.raw, Duration::from_millis(700)).await;
    for (i, v) in views.iter().enumerate() {
        if let Some(v) = v {
            topo.learn_id(v.member_id, i);
        }
    }
    let leader = leader::self_confirmed(&views);
    topo.set_leader(leader);
    leader
}

/// Polls until some member confirms it leads, or `timeout` passes.
pub async fn wait_leader(topo: &Topology, timeout: Duration) -> Option<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(l) = poll_leader(topo).await {
            return Some(l);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
