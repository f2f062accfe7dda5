//! A session: a lease kept alive in the background, as etcd's
//! `concurrency.Session`. Locks ([`crate::lock`]) and candidacies
//! ([`crate::election`]) are held on a session's lease, so they end when
//! the process does (its lease expires) and when the session is lost.
//!
//! Owns the keep-alive loop: a renewal every third of the TTL over a
//! `LeaseKeepAlive` stream, moving to the next endpoint when one fails.
//! The session is lost when the server says the lease is gone (TTL 0) or no
//! renewal got through for a whole TTL; [`Session::lost`] then resolves
//! with the reason.
//!
//! Must never: report a session alive after its lease may have expired on
//! the server (the loss is declared at the latest one TTL after the last
//! renewal the server confirmed).

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use warden_proto::etcdserverpb::lease_client::LeaseClient;
use warden_proto::etcdserverpb::LeaseKeepAliveRequest;

use crate::{Client, ClientError};

/// Default TTL of a session's lease, in seconds (etcd's `concurrency`
/// default).
pub const DEFAULT_TTL: i64 = 60;

/// Renews lease `id` every third of its TTL, over any endpoint, until an
/// error: the lease expired or was revoked (TTL 0 from the server), or no
/// renewal got through for a whole TTL. With `once`, returns after the
/// first renewal. `on_renew` sees each new TTL; an error from it ends the
/// loop with that error.
pub async fn keep_alive(
    client: &Client,
    id: i64,
    once: bool,
    mut on_renew: impl FnMut(i64) -> Result<(), ClientError>,
) -> Result<(), ClientError> {
    let mut last_ok = Instant::now();
    let mut ttl: i64 = 0;
    loop {
        for (ep, ch) in client.stream_channels().await? {
            let (tx, rx) = mpsc::channel(1);
            let stream = LeaseClient::new(ch)
                .lease_keep_alive(ReceiverStream::new(rx))
                .await;
            let mut stream = match stream {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    client.stream_failed(&e);
                    tracing::debug!("keep-alive via {ep}: {e}");
                    continue;
                }
            };
            loop {
                if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                    break;
                }
                match stream.message().await {
                    Ok(Some(r)) if r.ttl <= 0 => {
                        return Err(ClientError::SessionLost(format!(
                            "lease {id:016x} expired or revoked"
                        )))
                    }
                    Ok(Some(r)) => {
                        ttl = r.ttl;
                        last_ok = Instant::now();
                        on_renew(r.ttl)?;
                        if once {
                            return Ok(());
                        }
                        let every = Duration::from_millis((r.ttl.max(1) as u64) * 1000 / 3);
                        tokio::time::sleep(every.max(Duration::from_millis(500))).await;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!("keep-alive via {ep}: {e}");
                        break;
                    }
                }
            }
            if ttl > 0 && last_ok.elapsed() > Duration::from_secs(ttl as u64) {
                return Err(ClientError::SessionLost(format!(
                    "lease {id:016x}: no renewal got through for {ttl}s"
                )));
            }
        }
        if once {
            return Err(ClientError::SessionLost(format!(
                "could not renew lease {id:016x} on any endpoint"
            )));
        }
        tokio::time::sleep(crate::STREAM_RETRY).await;
    }
}

/// A lease kept alive in the background until [`Session::close`] or drop.
///
/// ```no_run
/// # async fn demo(client: warden_client::Client) -> Result<(), warden_client::ClientError> {
/// use warden_client::Session;
/// let session = Session::new(&client, 10).await?;
/// println!("lease {:x}", session.lease_id());
/// tokio::select! {
///     reason = session.lost() => eprintln!("session lost: {reason}"),
///     _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
/// }
/// session.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Session {
    client: Client,
    id: i64,
    ttl: i64,
    lost: watch::Receiver<Option<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Grants a lease of `ttl` seconds and keeps it alive in the
    /// background.
    pub async fn new(client: &Client, ttl: i64) -> Result<Session, ClientError> {
        let granted = client.lease_grant(ttl, 0).await?;
        Ok(Session::keep(client, granted.id, granted.ttl))
    }

    /// Keeps the existing lease `id` (of `ttl` seconds) alive.
    pub fn keep(client: &Client, id: i64, ttl: i64) -> Session {
        let (tx, lost) = watch::channel(None);
        let c = client.clone();
        let task = tokio::spawn(async move {
            let reason = match keep_alive(&c, id, false, |_| Ok(())).await {
                Ok(()) => "keep-alive stopped".to_string(),
                Err(e) => e.to_string(),
            };
            let _ = tx.send(Some(reason));
        });
        Session {
            client: client.clone(),
            id,
            ttl,
            lost,
            task,
        }
    }

    /// The lease id: attach keys to it to have them deleted when the
    /// session ends.
    pub fn lease_id(&self) -> i64 {
        self.id
    }

    /// The lease's TTL in seconds, as granted.
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    /// The client the session renews through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether the session was lost (see [`Session::lost`]).
    pub fn is_lost(&self) -> bool {
        self.lost.borrow().is_some()
    }

    /// Resolves when the session is lost, with the reason: the lease expired
    /// or was revoked, or no renewal got through for a whole TTL. Whatever
    /// was held on the lease is no longer held.
    pub async fn lost(&self) -> String {
        let mut rx = self.lost.clone();
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                return "keep-alive task ended".into();
            }
        }
    }

    /// Stops renewing and revokes the lease, deleting every key attached to
    /// it (and so releasing the locks and candidacies held on it).
    pub async fn close(self) -> Result<(), ClientError> {
        self.task.abort();
        self.client.lease_revoke(self.id).await.map(|_| ())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Without `close`, the lease runs out on its own within its TTL.
        self.task.abort();
    }
}
