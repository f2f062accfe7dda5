//! Leases for `warden bench`: granting and revoking a batch of them, and
//! [`Keeper`], which keeps a batch alive in the background from a connection
//! of its own (`--keepalive-leases`, and the per-client leases of the lock
//! workloads).
//!
//! Must never: let a renewal failure pass unnoticed (a renewal finding its
//! lease expired is counted; a broken stream ends the keeper with an error).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use tonic::transport::Channel;

use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::lease_client::LeaseClient;

/// Grants `n` leases of `ttl` seconds (64 requests at a time).
pub async fn grant(channel: &Channel, n: usize, ttl: i64) -> anyhow::Result<Vec<i64>> {
    let lease = LeaseClient::new(channel.clone());
    futures::stream::iter(0..n)
        .map(|_| {
            let mut lease = lease.clone();
            async move {
                lease
                    .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
                    .await
                    .map(|r| r.into_inner().id)
            }
        })
        .buffer_unordered(64)
        .try_collect()
        .await
        .context("granting leases")
}

/// Revokes `ids` (64 at a time), ignoring failures: a lease not revoked
/// expires by itself.
pub async fn revoke(channel: &Channel, ids: &[i64]) {
    let lease = LeaseClient::new(channel.clone());
    futures::stream::iter(ids.iter().copied())
        .map(|id| {
            let mut lease = lease.clone();
            async move { lease.lease_revoke(pb::LeaseRevokeRequest { id }).await }
        })
        .buffer_unordered(64)
        .for_each(|_| async {})
        .await;
}

/// Leases kept alive in the background (`--keepalive-leases`).
pub struct Keeper {
    channel: Channel,
    pub ids: Arc<Vec<i64>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<(u64, u64)>>,
}

impl Keeper {
    /// Grants `n` leases (64 at a time) and starts renewing them.
    pub async fn start(channel: Channel, n: usize, ttl: i64) -> anyhow::Result<Keeper> {
        let ids = grant(&channel, n, ttl)
            .await
            .context("granting the keep-alive leases")?;
        let ids = Arc::new(ids);
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        // etcd (grpc-go) answers the call only once the first request is
        // sent, so it is queued before the call is made.
        if let Some(first) = ids.first() {
            tx.send(pb::LeaseKeepAliveRequest { id: *first })
                .await
                .context("queueing the first keep-alive")?;
        }
        let mut answers = LeaseClient::new(channel.clone())
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .context("opening the keep-alive stream")?
            .into_inner();
        let round = Duration::from_millis((ttl.max(1) as u64) * 1000 / 3);
        let all = ids.clone();
        let task = tokio::spawn(async move {
            let (mut renewed, mut lost) = (0u64, 0u64);
            let mut first_round = true;
            while !*stopped.borrow() {
                let started = Instant::now();
                // The first round's first request was queued by `start`.
                let skip = usize::from(std::mem::take(&mut first_round));
                let send = async {
                    for id in all.iter().skip(skip) {
                        if tx
                            .send(pb::LeaseKeepAliveRequest { id: *id })
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                };
                let recv = async {
                    for _ in 0..all.len() {
                        match answers.message().await {
                            Ok(Some(r)) if r.ttl > 0 => renewed += 1,
                            Ok(Some(_)) => lost += 1,
                            Ok(None) => bail!("keep-alive stream ended"),
                            Err(e) => bail!("keep-alive stream: {e}"),
                        }
                    }
                    Ok(())
                };
                let (_, r) = tokio::join!(send, recv);
                r?;
                // A dropped sender answers at once: stop rather than renew
                // without a pause.
                if let Ok(Err(_)) =
                    tokio::time::timeout(round.saturating_sub(started.elapsed()), stopped.changed())
                        .await
                {
                    break;
                }
            }
            Ok((renewed, lost))
        });
        Ok(Keeper {
            channel,
            ids,
            stop,
            task,
        })
    }

    /// Stops renewing and revokes the leases; returns (renewals answered,
    /// renewals of a lease found expired).
    pub async fn finish(self) -> anyhow::Result<(u64, u64)> {
        let _ = self.stop.send(true);
        let counts = self.task.await.context("keep-alive task")??;
        revoke(&self.channel, &self.ids).await;
        Ok(counts)
    }
}
