//! Nemeses: the faults the harness injects, on a schedule computed up front
//! from the seed (so a failing run's schedule can be replayed), and the task
//! that carries the schedule out against a [`ChaosCluster`].
//!
//! Every fault is healed before the next one starts, and all of them at the
//! end. Each fault is recorded in the history as one `nemesis` operation
//! spanning the time it was in effect.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::cluster::{poll_leader, ChaosCluster};
use super::history::{Call, Outcome, Recorder, HARNESS};

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// SIGKILL the leader, restart it on its data directory later.
    KillLeader,
    /// SIGKILL a random member, restart it later.
    KillMember,
    /// SIGKILL every member at once, restart them all later.
    KillAll,
    /// SIGSTOP the leader for longer than an election timeout, then SIGCONT.
    PauseLeader,
    /// SIGSTOP a random member, then SIGCONT.
    PauseMember,
    /// Cut the leader off from every other member, then heal.
    PartitionLeader,
    /// Split the members into a random minority and majority, then heal.
    PartitionHalves,
    /// Remove a random member, wipe it, and re-add it with `--join`.
    ReplaceMember,
}

pub const ALL: [Kind; 8] = [
    Kind::KillLeader,
    Kind::KillMember,
    Kind::KillAll,
    Kind::PauseLeader,
    Kind::PauseMember,
    Kind::PartitionLeader,
    Kind::PartitionHalves,
    Kind::ReplaceMember,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::KillLeader => "kill-leader",
            Kind::KillMember => "kill-member",
            Kind::KillAll => "kill-all",
            Kind::PauseLeader => "pause-leader",
            Kind::PauseMember => "pause-member",
            Kind::PartitionLeader => "partition-leader",
            Kind::PartitionHalves => "partition-halves",
            Kind::ReplaceMember => "replace-member",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Kind> {
        ALL.iter().copied().find(|k| k.name() == s).ok_or_else(|| {
            anyhow::anyhow!(
                "unknown nemesis {s:?}: expected one of {}",
                ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// Whether it needs the peer proxies.
    pub fn needs_proxies(self) -> bool {
        matches!(self, Kind::PartitionLeader | Kind::PartitionHalves)
    }
}

/// One scheduled fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// When it starts, from the start of the workload.
    pub at: Duration,
    pub kind: Kind,
    /// How long it stays in effect.
    pub hold: Duration,
    /// Random number choosing the victim(s) when it is not the leader.
    pub pick: u64,
}

/// Schedule settings.
#[derive(Clone, Debug)]
pub struct Plan {
    pub kinds: Vec<Kind>,
    /// The workload's length.
    pub duration: Duration,
    /// Quiet time at the start.
    pub warmup: Duration,
    /// Quiet time between faults, drawn from this range.
    pub gap: (Duration, Duration),
    /// How long a fault lasts, drawn from this range; pauses last at least
    /// `min_pause` (longer than an election timeout).
    pub hold: (Duration, Duration),
    pub min_pause: Duration,
}

fn between(rng: &mut StdRng, (lo, hi): (Duration, Duration)) -> Duration {
    let (lo, hi) = (lo.as_millis() as u64, hi.as_millis() as u64);
    Duration::from_millis(if hi > lo {
        rng.random_range(lo..=hi)
    } else {
        lo
    })
}

/// The faults of a run with `seed`: the first ones are every kind once, in
/// a seeded order, so a short run still sees each; then random kinds.
pub fn schedule(seed: u64, plan: &Plan) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x004e_454d_4553_4953);
    let mut first: Vec<Kind> = plan.kinds.clone();
    first.shuffle(&mut rng);
    let mut steps = Vec::new();
    let mut t = plan.warmup;
    // Leave time at the end for the last fault to heal under load.
    let end = plan.duration.saturating_sub(plan.gap.0);
    let mut k = 0usize;
    while !plan.kinds.is_empty() {
        let kind = match first.get(k) {
            Some(kind) => *kind,
            None => plan.kinds[rng.random_range(0..plan.kinds.len())],
        };
        let mut hold = between(&mut rng, plan.hold);
        if matches!(kind, Kind::PauseLeader | Kind::PauseMember) {
            hold = hold.max(plan.min_pause);
        }
        if t + hold > end {
            break;
        }
        steps.push(Step {
            at: t,
            kind,
            hold,
            pick: rng.random(),
        });
        t += hold + between(&mut rng, plan.gap);
        k += 1;
    }
    steps
}

/// Carries out `steps` from `start`, then heals everything; gives the
/// cluster back.
pub async fn run(
    mut cluster: ChaosCluster,
    steps: Vec<Step>,
    rec: Recorder,
    start: Instant,
) -> ChaosCluster {
    for step in steps {
        tokio::time::sleep_until(start + step.at).await;
        let invoke = rec.now();
        let (action, error) = match apply(&mut cluster, &step).await {
            Ok(a) => (a, None),
            Err(e) => (format!("{} failed", step.kind.name()), Some(e.to_string())),
        };
        tokio::time::sleep(step.hold).await;
        let healed = cluster.heal_all().err().map(|e| e.to_string());
        rec.record(
            HARNESS,
            invoke,
            Call::Nemesis {
                action: format!("{action}; healed"),
            },
            if error.is_none() && healed.is_none() {
                Outcome::Ok
            } else {
                Outcome::Fail
            },
            None,
            error.or(healed),
            None,
        );
    }
    cluster
}

/// A member index from a random number.
fn victim(pick: u64, n: usize) -> usize {
    (pick % n.max(1) as u64) as usize
}

async fn leader_or_random(cluster: &ChaosCluster, pick: u64) -> (usize, &'static str) {
    match poll_leader(&cluster.topo).await {
        Some(l) => (l, "leader"),
        None => (
            victim(pick, cluster.len()),
            "no leader known; random member",
        ),
    }
}

/// Injects one fault; describes what it did.
async fn apply(cluster: &mut ChaosCluster, step: &Step) -> anyhow::Result<String> {
    let n = cluster.len();
    let kind = step.kind.name();
    Ok(match step.kind {
        Kind::KillLeader | Kind::KillMember => {
            let (i, why) = if step.kind == Kind::KillLeader {
                leader_or_random(cluster, step.pick).await
            } else {
                (victim(step.pick, n), "random")
            };
            cluster.kill(i);
            format!(
                "{kind}: SIGKILL {} ({why}), restart after {:?}",
                cluster.name(i),
                step.hold
            )
        }
        Kind::KillAll => {
            for i in 0..n {
                cluster.kill(i);
            }
            format!(
                "{kind}: SIGKILL every member, restart after {:?}",
                step.hold
            )
        }
        Kind::PauseLeader | Kind::PauseMember => {
            let (i, why) = if step.kind == Kind::PauseLeader {
                leader_or_random(cluster, step.pick).await
            } else {
                (victim(step.pick, n), "random")
            };
            cluster.pause(i)?;
            format!(
                "{kind}: SIGSTOP {} ({why}) for {:?}",
                cluster.name(i),
                step.hold
            )
        }
        Kind::PartitionLeader => {
            let (l, why) = leader_or_random(cluster, step.pick).await;
            let rest: Vec<usize> = (0..n).filter(|i| *i != l).collect();
            cluster.partition(&[vec![l], rest]);
            format!(
                "{kind}: isolate {} ({why}) for {:?}",
                cluster.name(l),
                step.hold
            )
        }
        Kind::PartitionHalves => {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut StdRng::seed_from_u64(step.pick));
            let minority = order[..(n - 1) / 2].to_vec();
            let majority = order[(n - 1) / 2..].to_vec();
            let names = |g: &[usize]| {
                g.iter()
                    .map(|i| cluster.name(*i))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let text = format!(
                "{kind}: split [{}] | [{}] for {:?}",
                names(&minority),
                names(&majority),
                step.hold
            );
            cluster.partition(&[minority, majority]);
            text
        }
        Kind::ReplaceMember => {
            let i = victim(step.pick, n);
            cluster.replace(i).await?;
            format!(
                "{kind}: remove {}, wipe it, re-add with --join after {:?}",
                cluster.name(i),
                step.hold
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(kinds: Vec<Kind>, secs: u64) -> Plan {
        Plan {
            kinds,
            duration: Duration::from_secs(secs),
            warmup: Duration::from_secs(3),
            gap: (Duration::from_secs(2), Duration::from_secs(5)),
            hold: (Duration::from_secs(1), Duration::from_secs(4)),
            min_pause: Duration::from_millis(2500),
        }
    }

    #[test]
    fn schedule_is_seeded_and_covers_every_kind_first() {
        let p = plan(ALL.to_vec(), 120);
        let a = schedule(42, &p);
        assert_eq!(a, schedule(42, &p));
        assert_ne!(a, schedule(43, &p));
        let mut first: Vec<Kind> = a.iter().take(ALL.len()).map(|s| s.kind).collect();
        first.sort();
        assert_eq!(first, ALL.to_vec());
        for w in a.windows(2) {
            assert!(w[0].at + w[0].hold < w[1].at, "faults do not overlap");
        }
        let last = a.last().expect("steps");
        assert!(last.at + last.hold <= Duration::from_secs(118));
        for s in &a {
            if matches!(s.kind, Kind::PauseLeader | Kind::PauseMember) {
                assert!(s.hold >= Duration::from_millis(2500));
            }
        }
    }

    #[test]
    fn no_kinds_no_steps_and_names_parse() {
        assert!(schedule(1, &plan(Vec::new(), 100)).is_empty());
        for k in ALL {
            assert_eq!(Kind::parse(k.name()).ok(), Some(k));
        }
        assert!(Kind::parse("meteor").is_err());
    }
}
