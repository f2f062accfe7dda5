//! The cluster commands of the command-line client: `status` (etcdctl's
//! `endpoint status`: one row per endpoint) and `member list`. Owns their
//! flags and how failures of single endpoints are reported.

use clap::{Args, Subcommand};

use crate::client::Client;

use super::kv::Consistency;
use super::output::{self, EndpointStatus, Format};

/// Flags of `status`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct StatusArgs {}

/// Subcommands of `member`.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum MemberCommand {
    /// List the cluster's members.
    List(MemberListArgs),
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
