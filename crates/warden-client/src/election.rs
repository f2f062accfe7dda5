//! Leader election on etcd's election service (`v3electionpb.Election`,
//! the same service `etcdctl elect` and Go's `concurrency.Election` use, so
//! candidates from all three take part in one election).
//!
//! A candidate campaigns with a [`Session`]'s lease: its key
//! `name/<lease hex>` is attached to the lease, the oldest key leads, and
//! leadership ends when the candidate resigns or the session is lost.
//! Campaigning with one lease twice is idempotent on the server, so a
//! campaign that failed mid-way is simply sent again.
//!
//! Must never: report leadership that was not granted, or let an observer
//! report the same leader twice in a row or miss the last change when it
//! moves to another member.

use tokio::sync::mpsc;

use warden_proto::mvccpb::KeyValue;
use warden_proto::v3electionpb as epb;
use warden_proto::v3electionpb::election_client::ElectionClient;

use crate::retry::{self, Failure};
use crate::session::Session;
use crate::{Client, ClientError, OpKind};

/// An election named `name`.
///
/// ```no_run
/// # async fn demo(client: warden_client::Client) -> Result<(), warden_client::ClientError> {
/// use warden_client::{Election, Session};
/// let session = Session::new(&client, 10).await?;
/// let election = Election::new(&client, "service/primary");
/// let leadership = election.campaign(&session, "host-a:8080").await?;
/// // ... act as the leader until the session is lost ...
/// leadership.resign().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Election {
    client: Client,
    name: Vec<u8>,
}

/// Leadership won by [`Election::campaign`].
#[derive(Debug, Clone)]
pub struct Leadership {
    client: Client,
    key: epb::LeaderKey,
}

/// The changes of an election's leader ([`Election::observe`]).
#[derive(Debug)]
pub struct Observer {
    rx: mpsc::Receiver<Result<KeyValue, ClientError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Election {
    /// The election `name`.
    pub fn new(client: &Client, name: impl Into<Vec<u8>>) -> Election {
        Election {
            client: client.clone(),
            name: name.into(),
        }
    }

    /// Becomes a candidate with `value` on `session`'s lease and waits
    /// until elected (or the session is lost).
    pub async fn campaign(
        &self,
        session: &Session,
        value: impl Into<Vec<u8>>,
    ) -> Result<Leadership, ClientError> {
        let req = epb::CampaignRequest {
            name: self.name.clone(),
            lease: session.lease_id(),
            value: value.into(),
        };
        let campaign = async {
            loop {
                let mut last = None;
                for (ep, ch) in self.client.stream_channels().await? {
                    match ElectionClient::new(ch).campaign(req.clone()).await {
                        Ok(r) => return Ok((ep, r.into_inner())),
                        Err(status) => {
                            self.client.stream_failed(&status);
                            if retry::classify(&status) == Failure::Fatal {
                                return Err(ClientError::Server {
                                    code: status.code(),
                                    message: retry::describe(&status),
                                    endpoint: ep,
                                });
                            }
                            tracing::debug!("campaign via {ep}: {status}");
                            last = Some(status);
                        }
                    }
                }
                if let Some(s) = last {
                    tracing::debug!("campaign: no endpoint took it ({s}); retrying");
                }
                tokio::time::sleep(crate::STREAM_RETRY).await;
            }
        };
        let (ep, won) = tokio::select! {
            r = campaign => r?,
            reason = session.lost() => return Err(ClientError::SessionLost(reason)),
        };
        let key = won.leader.ok_or_else(|| ClientError::Server {
            code: tonic::Code::Internal,
            message: "campaign answered without a leader key".into(),
            endpoint: ep,
        })?;
        Ok(Leadership {
            client: self.client.clone(),
            key,
        })
    }

    /// The current leader's key and value (`None`: no leader).
    pub async fn leader(&self) -> Result<Option<KeyValue>, ClientError> {
        let name = self.name.clone();
        let r = self
            .client
            .request(OpKind::Read, move |ch, t| {
                let mut req = tonic::Request::new(epb::LeaderRequest { name: name.clone() });
                req.set_timeout(t);
                async move { ElectionClient::new(ch).leader(req).await }
            })
            .await;
        match r {
            Ok(r) => Ok(r.kv),
            // etcd answers "no leader" with an error.
            Err(ClientError::Server { message, .. }) if message.contains("election: no leader") => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Every change of leader, starting with the current one, across member
    /// failures (the observer moves to the next endpoint).
    pub fn observe(&self) -> Observer {
        let (tx, rx) = mpsc::channel(16);
        let (client, name) = (self.client.clone(), self.name.clone());
        let task = tokio::spawn(async move {
            let mut last: Option<(Vec<u8>, i64)> = None;
            loop {
                let channels = match client.stream_channels().await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                for (ep, ch) in channels {
                    let req = epb::LeaderRequest { name: name.clone() };
                    let mut stream = match ElectionClient::new(ch).observe(req).await {
                        Ok(s) => s.into_inner(),
                        Err(e) => {
                            client.stream_failed(&e);
                            tracing::debug!("observe via {ep}: {e}");
                            continue;
                        }
                    };
                    while let Ok(Some(r)) = stream.message().await {
                        let Some(kv) = r.kv else { continue };
                        let id = (kv.key.clone(), kv.mod_revision);
                        if last.as_ref() != Some(&id) {
                            last = Some(id);
                            if tx.send(Ok(kv)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                tokio::time::sleep(crate::STREAM_RETRY).await;
            }
        });
        Observer { rx, task }
    }
}

impl Leadership {
    /// The leader key (name, key, revision, lease).
    pub fn key(&self) -> &epb::LeaderKey {
        &self.key
    }

    /// Replaces the leader's value without an election.
    pub async fn proclaim(&self, value: impl Into<Vec<u8>>) -> Result<(), ClientError> {
        let req = epb::ProclaimRequest {
            leader: Some(self.key.clone()),
            value: value.into(),
        };
        self.client
            .request(OpKind::Write, move |ch, t| {
                let mut r = tonic::Request::new(req.clone());
                r.set_timeout(t);
                async move { ElectionClient::new(ch).proclaim(r).await }
            })
            .await
            .map(|_| ())
    }

    /// Gives leadership up; the next candidate is elected.
    pub async fn resign(self) -> Result<(), ClientError> {
        let req = epb::ResignRequest {
            leader: Some(self.key.clone()),
        };
        self.client
            .request(OpKind::Write, move |ch, t| {
                let mut r = tonic::Request::new(req.clone());
                r.set_timeout(t);
                async move { ElectionClient::new(ch).resign(r).await }
            })
            .await
            .map(|_| ())
    }
}

impl Observer {
    /// The next leader (key and value); an error ends the observation.
    pub async fn next(&mut self) -> Option<Result<KeyValue, ClientError>> {
        self.rx.recv().await
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
