//! The cluster commands of the command-line client: `status` (etcdctl's
//! `endpoint status`: one row per endpoint) and `member list`. Owns their
//! flags and how failures of single endpoints are reported.
//!
//! Must never: print directly (output goes into the caller's buffer through
//! [`super::output`] or `writeln!`), or send a membership change as anything
//! but a write, which the client library does not retry unless it provably
//! was not applied.

use clap::{Args, Subcommand};

use warden_client::Client;

use super::kv_args::Consistency;
use super::output::{self, EndpointStatus, Format};

/// Flags of `status`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct StatusArgs {}

/// Subcommands of `member`.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum MemberCommand {
    /// List the cluster's members.
    List(MemberListArgs),
    /// Add a member by its peer URL (as a learner with --learner). Start it
    /// with `warden server --join` instead to do both in one step.
    Add {
        /// Name of the new member (shown until it publishes its own).
        name: String,
        /// The new member's peer URL, http://host:port.
        #[arg(long)]
        peer_urls: String,
        /// Add it as a non-voting learner.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a member (hex id as `member list` shows). Removing the leader
    /// hands leadership over first.
    Remove {
        #[arg(value_parser = parse_member_id)]
        id: u64,
    },
    /// Promote a learner to voter (refused while it lags behind).
    Promote {
        #[arg(value_parser = parse_member_id)]
        id: u64,
    },
    /// Change a member's peer URL.
    Update {
        #[arg(value_parser = parse_member_id)]
        id: u64,
        #[arg(long)]
        peer_urls: String,
    },
    /// Make another voting member the leader.
    TransferLeader {
        /// Hex id of the member to lead.
        #[arg(value_parser = parse_member_id)]
        to: u64,
    },
}

/// A member id in hex, as etcdctl prints and takes them.
pub fn parse_member_id(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16)
        .map_err(|_| format!("bad member ID {s:?}: expecting ID in hex"))
}

/// `member add/remove/promote/update/transfer-leader`.
pub async fn member_change(
    client: &Client,
    cmd: MemberCommand,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    use pb::cluster_client::ClusterClient;
    use std::io::Write;
    use warden_client::OpKind;
    use warden_proto::etcdserverpb as pb;
    let cluster = |ch| ClusterClient::new(ch);
    match cmd {
        MemberCommand::List(_) => anyhow::bail!("not a membership change"),
        MemberCommand::Add {
            name,
            peer_urls,
            learner,
        } => {
            let urls: Vec<String> = peer_urls.split(',').map(|u| u.trim().to_string()).collect();
            let r = client
                .request(OpKind::Write, move |ch, _| {
                    let peer_urls = urls.clone();
                    async move {
                        cluster(ch)
                            .member_add(pb::MemberAddRequest {
                                peer_urls,
                                is_learner: learner,
                            })
                            .await
                    }
                })
                .await?;
            let id = r.member.as_ref().map_or(0, |m| m.id);
            let cid = r.header.as_ref().map_or(0, |h| h.cluster_id);
            writeln!(out, "Member {id:16x} added to cluster {cid:16x}")?;
            writeln!(out, "\nStart the new member {name} with:")?;
            writeln!(
                out,
                "  warden server --name {name} --peer-addr {} --join {} ...",
                peer_urls.trim_start_matches("http://"),
                client.endpoints().join(",")
            )?;
        }
        MemberCommand::Remove { id } => {
            let r = client
                .request(OpKind::Write, move |ch, _| async move {
                    cluster(ch)
                        .member_remove(pb::MemberRemoveRequest { id })
                        .await
                })
                .await?;
            let cid = r.header.as_ref().map_or(0, |h| h.cluster_id);
            writeln!(out, "Member {id:16x} removed from cluster {cid:16x}")?;
        }
        MemberCommand::Promote { id } => {
            let r = client
                .request(OpKind::Write, move |ch, _| async move {
                    cluster(ch)
                        .member_promote(pb::MemberPromoteRequest { id })
                        .await
                })
                .await?;
            let cid = r.header.as_ref().map_or(0, |h| h.cluster_id);
            writeln!(out, "Member {id:16x} promoted in cluster {cid:16x}")?;
        }
        MemberCommand::Update { id, peer_urls } => {
            let urls: Vec<String> = peer_urls.split(',').map(|u| u.trim().to_string()).collect();
            let r = client
                .request(OpKind::Write, move |ch, _| {
                    let peer_urls = urls.clone();
                    async move {
                        cluster(ch)
                            .member_update(pb::MemberUpdateRequest { id, peer_urls })
                            .await
                    }
                })
                .await?;
            let cid = r.header.as_ref().map_or(0, |h| h.cluster_id);
            writeln!(out, "Member {id:16x} updated in cluster {cid:16x}")?;
        }
        MemberCommand::TransferLeader { to } => {
            // MoveLeader must reach the current leader: find it.
            let mut leader_ep = None;
            for ep in client.endpoints() {
                if let Ok(st) = client.status(ep).await {
                    if st.leader != 0 && st.header.as_ref().map(|h| h.member_id) == Some(st.leader)
                    {
                        leader_ep = Some(ep.clone());
                        break;
                    }
                }
            }
            let Some(ep) = leader_ep else {
                anyhow::bail!(
                    "no leader among the endpoints {}",
                    client.endpoints().join(",")
                );
            };
            let single = Client::connect([ep.as_str()], client.options().clone()).await?;
            single
                .request(OpKind::Write, move |ch, _| async move {
                    pb::maintenance_client::MaintenanceClient::new(ch)
                        .move_leader(pb::MoveLeaderRequest { target_id: to })
                        .await
                })
                .await?;
            writeln!(out, "Leadership transferred to {to:x}")?;
        }
    }
    Ok(())
}

/// Flags of `member list`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct MemberListArgs {
    /// Linearizable (l: confirmed with the leader) or serializable (s: the
    /// contacted member's view, works without a leader).
    #[arg(long, value_enum, ignore_case = true, default_value = "l")]
    pub consistency: Consistency,
}

/// `warden status`: asks every endpoint for its status, concurrently.
/// Prints the members that answered; fails (after printing them) when any
/// endpoint did not, naming each.
pub async fn status(
    client: &Client,
    _args: StatusArgs,
    f: Format,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let endpoints = client.endpoints().to_vec();
    let answers = futures::future::join_all(
        endpoints
            .iter()
            .map(|ep| async move { (ep, client.status(ep).await) }),
    )
    .await;
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for (ep, answer) in answers {
        match answer {
            Ok(status) => rows.push(EndpointStatus {
                endpoint: ep.clone(),
                status,
            }),
            Err(e) => failures.push(format!("{ep} ({})", e.message())),
        }
    }
    output::endpoint_status(out, f, &rows)?;
    if !failures.is_empty() {
        anyhow::bail!(
            "failed to get the status of endpoint {}",
            failures.join("; ")
        );
    }
    Ok(())
}

/// `warden member list`.
pub async fn member_list(
    client: &Client,
    args: MemberListArgs,
    f: Format,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let resp = client
        .member_list(args.consistency == Consistency::L)
        .await?;
    output::member_list(out, f, &resp)?;
    Ok(())
}
