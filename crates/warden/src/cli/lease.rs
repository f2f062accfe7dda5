//! `warden lease`: grant, revoke, timetolive, list and keep-alive; and the
//! background keep-alive ([`KeptLease`]) that `elect` and `lock` hold their
//! lease with.
//!
//! Owns: the lease subcommands' flags and output, and the renewal loop. The
//! keep-alive stream moves to the next endpoint when one fails, and gives up
//! only when the lease is gone (TTL 0 from the leader) or no renewal got
//! through for a whole TTL.
//!
//! Must never: report a lease as alive after a renewal was refused, or keep
//! renewing silently once the lease is lost (callers are told through
//! [`KeptLease::lost`]).

use anyhow::Context;
use clap::Subcommand;
use warden_client::AuthChannel as Channel;

use super::common::print;
use super::kv_args::parse_lease_id;
use super::Format;
use warden_client::session::keep_alive;
use warden_client::{Client, ClientError, OpKind, Session};
use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::lease_client::LeaseClient;

#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Create a lease with a TTL in seconds.
    Grant { ttl: i64 },
    /// Revoke a lease and delete its keys.
    Revoke {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
    },
    /// Show a lease's remaining time (and keys).
    Timetolive {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Also list the attached keys.
        #[arg(long)]
        keys: bool,
    },
    /// List all leases.
    List,
    /// Keep a lease alive until interrupted (or once).
    KeepAlive {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
}

fn lease_client(ch: Channel) -> LeaseClient<Channel> {
    LeaseClient::new(ch)
}

pub async fn grant(client: &Client, ttl: i64) -> anyhow::Result<pb::LeaseGrantResponse> {
    let r = client
        .request(OpKind::Write, move |ch, _| async move {
            lease_client(ch)
                .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
                .await
        })
        .await?;
    Ok(r)
}

async fn revoke(client: &Client, id: i64) -> anyhow::Result<()> {
    client
        .request(OpKind::Write, move |ch, _| async move {
            lease_client(ch)
                .lease_revoke(pb::LeaseRevokeRequest { id })
                .await
        })
        .await?;
    Ok(())
}

pub async fn lease(client: &Client, cmd: LeaseCommand, f: Format) -> anyhow::Result<()> {
    let json = f == Format::Json;
    match cmd {
        LeaseCommand::Grant { ttl } => {
            let r = grant(client, ttl).await?;
            if json {
                print(&format!("{{\"ID\":{},\"TTL\":{}}}\n", r.id, r.ttl))
            } else {
                print(&format!(
                    "lease {:016x} granted with TTL({}s)\n",
                    r.id, r.ttl
                ))
            }
        }
        LeaseCommand::Revoke { id } => {
            revoke(client, id).await?;
            print(&format!("lease {id:016x} revoked\n"))
        }
        LeaseCommand::Timetolive { id, keys } => {
            let r = client
                .request(OpKind::Read, move |ch, _| async move {
                    lease_client(ch)
                        .lease_time_to_live(pb::LeaseTimeToLiveRequest { id, keys })
                        .await
                })
                .await?;
            let names: Vec<String> = r
                .keys
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            if json {
                let v = serde_json::json!({
                    "ID": r.id, "TTL": r.ttl, "granted-ttl": r.granted_ttl, "keys": names,
                });
                print(&format!("{v}\n"))
            } else if r.ttl == -1 {
                print(&format!("lease {id:016x} already expired\n"))
            } else {
                let mut s = format!(
                    "lease {id:016x} granted with TTL({}s), remaining({}s)",
                    r.granted_ttl, r.ttl
                );
                if keys {
                    s.push_str(&format!(", attached keys([{}])", names.join(" ")));
                }
                print(&format!("{s}\n"))
            }
        }
        LeaseCommand::List => {
            let r = client
                .request(OpKind::Read, move |ch, _| async move {
                    lease_client(ch)
                        .lease_leases(pb::LeaseLeasesRequest {})
                        .await
                })
                .await?;
            if json {
                let ids: Vec<i64> = r.leases.iter().map(|l| l.id).collect();
                print(&format!("{}\n", serde_json::json!({ "leases": ids })))
            } else {
                let mut s = format!("found {} leases\n", r.leases.len());
                for l in &r.leases {
                    s.push_str(&format!("{:016x}\n", l.id));
                }
                print(&s)
            }
        }
        LeaseCommand::KeepAlive { id, once } => {
            let mut output: anyhow::Result<()> = Ok(());
            let kept = keep_alive(client, id, once, |ttl| {
                output = print(&format!("lease {id:016x} keepalived with TTL({ttl})\n"));
                match &output {
                    Ok(()) => Ok(()),
                    Err(e) => Err(ClientError::InvalidOption(format!("writing output: {e:#}"))),
                }
            })
            .await;
            output?;
            Ok(kept?)
        }
    }
}

/// A lease kept alive in the background (the client library's
/// [`Session`]); `lost` resolves when the keep-alive gives up.
pub(super) struct KeptLease {
    session: Session,
}

impl KeptLease {
    pub(super) async fn start(client: &Client, ttl: i64) -> anyhow::Result<KeptLease> {
        let session = Session::new(client, ttl)
            .await
            .context("creating the lease")?;
        Ok(KeptLease { session })
    }

    /// The lease id.
    pub(super) fn id(&self) -> i64 {
        self.session.lease_id()
    }

    /// Resolves when the lease is lost, with the reason.
    pub(super) async fn lost(&mut self) -> String {
        self.session.lost().await
    }

    /// Stops renewing and revokes the lease (best effort).
    pub(super) async fn release(self) {
        let id = self.id();
        if let Err(e) = self.session.close().await {
            tracing::debug!("revoking lease {id:x}: {e:#}");
        }
    }
}
