//! Command-line flags of `warden-chaos` and their translation into
//! [`Options`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::cluster::ServerTiming;
use super::nemesis::{self, Kind};
use super::workload::Fault;
use super::Options;

/// Jepsen-style fault injection for warden: runs a real cluster under
/// concurrent clients while killing, pausing and partitioning members, then
/// checks what the clients observed.
#[derive(Parser, Debug, Clone)]
#[command(name = "warden-chaos", version)]
pub struct Args {
    /// The `warden` binary to run [default: `warden` next to this program].
    #[arg(long)]
    pub warden_bin: Option<PathBuf>,
    /// Cluster size (3 or 5).
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// Seconds of workload under faults.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Seed of the fault schedule and of every client's choices
    /// [default: random, printed].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output directory: history.jsonl, watch.jsonl, run.json, member logs.
    /// (Members' data goes to a temporary directory, removed at the end
    /// unless a check fails or --keep-data is given.)
    #[arg(long, default_value = "chaos-out")]
    pub out: PathBuf,
    /// Workloads: register, bank, lock, watch, counter.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "register,bank,lock,watch,counter"
    )]
    pub workloads: Vec<String>,
    /// Nemeses: kill-leader, kill-member, kill-all, pause-leader,
    /// pause-member, partition-leader, partition-halves; or all, or none.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub nemeses: Vec<String>,
    /// A deliberate client-side fault proving the checkers catch bugs:
    /// stale-reads (register reads go to followers as serializable reads),
    /// duplicate-increments (every tenth acknowledged counter increment is
    /// sent again as a new untagged write).
    #[arg(long)]
    pub fault: Option<String>,
    /// Register clients.
    #[arg(long, default_value_t = 4)]
    pub register_clients: u32,
    /// Register keys.
    #[arg(long, default_value_t = 3)]
    pub keys: usize,
    /// Bank clients.
    #[arg(long, default_value_t = 2)]
    pub bank_clients: u32,
    /// Bank accounts.
    #[arg(long, default_value_t = 5)]
    pub accounts: u32,
    /// Lock clients.
    #[arg(long, default_value_t = 3)]
    pub lock_clients: u32,
    /// Locks (each guards its own counter).
    #[arg(long, default_value_t = 2)]
    pub locks: usize,
    /// Watchers.
    #[arg(long, default_value_t = 2)]
    pub watchers: u32,
    /// Counter clients (exactly-once increments, each its own client id).
    #[arg(long, default_value_t = 3)]
    pub counter_clients: u32,
    /// Counters of the counter workload.
    #[arg(long, default_value_t = 3)]
    pub counters: u32,
    /// Servers' --election-timeout-min-ms.
    #[arg(long, default_value_t = 600)]
    pub election_timeout_min_ms: u64,
    /// Servers' --election-timeout-max-ms.
    #[arg(long, default_value_t = 1200)]
    pub election_timeout_max_ms: u64,
    /// Servers' --heartbeat-interval-ms.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval_ms: u64,
    /// Servers' --request-timeout-ms.
    #[arg(long, default_value_t = 3000)]
    pub request_timeout_ms: u64,
    /// Servers' --snapshot-entries [default: the server's].
    #[arg(long)]
    pub snapshot_entries: Option<u64>,
    /// Clients' overall deadline per operation, retries included.
    #[arg(long, default_value_t = 4000)]
    pub client_timeout_ms: u64,
    /// Quiet time before the first fault.
    #[arg(long, default_value_t = 3000)]
    pub warmup_ms: u64,
    /// Shortest quiet time between faults.
    #[arg(long, default_value_t = 3000)]
    pub gap_min_ms: u64,
    /// Longest quiet time between faults.
    #[arg(long, default_value_t = 6000)]
    pub gap_max_ms: u64,
    /// Shortest fault.
    #[arg(long, default_value_t = 1500)]
    pub hold_min_ms: u64,
    /// Longest fault.
    #[arg(long, default_value_t = 5000)]
    pub hold_max_ms: u64,
    /// Require the events of one multi-key revision to reach watchers in the
    /// same order as the replay from history (off by default: warden's
    /// replay orders them by key, live events come in transaction order).
    #[arg(long)]
    pub strict_watch_order: bool,
    /// Keep the members' data directories even when every check passes.
    #[arg(long)]
    pub keep_data: bool,
    /// Run the members with TLS on both ports (client certificates
    /// required, mutual TLS between members), with certificates made by
    /// `warden certs` in OUT/certs; every client connects over TLS.
    #[arg(long)]
    pub tls: bool,
    /// Turn etcd auth on before the workloads start: a `root` user and a
    /// `chaos` user whose role may read and write every key; every client
    /// of the workloads authenticates as `chaos`, so every request carries
    /// a token and passes the permission checks.
    #[arg(long)]
    pub auth: bool,
    /// Do not run anything: check the history saved in this directory.
    #[arg(long)]
    pub check: Option<PathBuf>,
}

const WORKLOADS: [&str; 5] = ["register", "bank", "lock", "watch", "counter"];

impl Args {
    /// Validates the flags.
    pub fn options(&self) -> anyhow::Result<Options> {
        if !(1..=9).contains(&self.members) {
            anyhow::bail!("invalid --members {}: expected 1 to 9", self.members);
        }
        for w in &self.workloads {
            if !WORKLOADS.contains(&w.as_str()) {
                anyhow::bail!("unknown workload {w:?}: expected {}", WORKLOADS.join(", "));
            }
        }
        let mut nemeses = Vec::new();
        for n in &self.nemeses {
            match n.as_str() {
                "all" => nemeses.extend(nemesis::ALL),
                "none" | "" => {}
                other => nemeses.push(Kind::parse(other)?),
            }
        }
        nemeses.sort();
        nemeses.dedup();
        if self.members < 3 {
            // One or two members cannot lose one and keep a majority.
            nemeses.retain(|k| matches!(k, Kind::KillAll));
        }
        let fault = self.fault.as_deref().map(Fault::parse).transpose()?;
        let warden_bin = match &self.warden_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe()?
                .parent()
                .map(|d| d.join("warden"))
                .ok_or_else(|| {
                    anyhow::anyhow!("cannot locate the warden binary: pass --warden-bin")
                })?,
        };
        let ms = Duration::from_millis;
        let seed = self.seed.unwrap_or_else(rand::random);
        Ok(Options {
            warden_bin,
            members: self.members,
            duration: Duration::from_secs(self.duration),
            seed,
            out: self.out.clone(),
            workloads: self.workloads.clone(),
            nemeses,
            fault,
            register_clients: self.register_clients,
            keys: self.keys.max(1),
            bank_clients: self.bank_clients,
            accounts: self.accounts.max(2),
            lock_clients: self.lock_clients,
            locks: self.locks.max(1),
            watchers: self.watchers,
            counter_clients: self.counter_clients,
            counters: self.counters.max(1),
            timing: ServerTiming {
                election_min_ms: self.election_timeout_min_ms,
                election_max_ms: self.election_timeout_max_ms,
                heartbeat_ms: self.heartbeat_interval_ms,
                request_timeout_ms: self.request_timeout_ms,
                snapshot_entries: self.snapshot_entries,
            },
            client_timeout: ms(self.client_timeout_ms),
            warmup: ms(self.warmup_ms),
            gap: (
                ms(self.gap_min_ms),
                ms(self.gap_max_ms.max(self.gap_min_ms)),
            ),
            hold: (
                ms(self.hold_min_ms),
                ms(self.hold_max_ms.max(self.hold_min_ms)),
            ),
            keep_data: self.keep_data,
            tls: self.tls,
            auth: self.auth,
            strict_watch_order: self.strict_watch_order,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_options() {
        let a = Args::parse_from([
            "warden-chaos",
            "--seed",
            "7",
            "--nemeses",
            "kill-leader,pause-member",
            "--workloads",
            "register,watch,counter",
            "--counters",
            "4",
            "--fault",
            "stale-reads",
            "--warden-bin",
            "/x/warden",
        ]);
        let o = a.options().expect("options");
        assert_eq!(o.seed, 7);
        assert_eq!(o.nemeses, vec![Kind::KillLeader, Kind::PauseMember]);
        assert_eq!(o.fault, Some(Fault::StaleReads));
        assert_eq!(o.warden_bin, PathBuf::from("/x/warden"));
        assert_eq!(o.workloads, vec!["register", "watch", "counter"]);
        assert_eq!(o.counters, 4);
        let all = Args::parse_from(["warden-chaos"])
            .options()
            .expect("options");
        assert_eq!(all.nemeses.len(), nemesis::ALL.len());
        assert_eq!(
            all.workloads.len(),
            WORKLOADS.len(),
            "every workload by default"
        );
        assert!(Args::parse_from(["warden-chaos", "--workloads", "nope"])
            .options()
            .is_err());
        assert!(Args::parse_from(["warden-chaos", "--nemeses", "none"])
            .options()
            .expect("options")
            .nemeses
            .is_empty());
    }
}
