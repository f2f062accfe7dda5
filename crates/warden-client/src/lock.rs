//! Locks on warden's native lock service (`warden.v1.Locks`): [`Mutex`]
//! (exclusive) and [`RwLock`] (shared readers, exclusive writers), held on a
//! [`Session`]'s lease, granted in fair queue order, each grant with a
//! fencing token that grows with every grant of the lock.
//!
//! A [`LockGuard`] is the proof of holding: its token and secret handle let
//! [`LockGuard::fenced_txn`] run a transaction that the server applies only
//! while this hold is current, so a holder that was paused past its lease
//! cannot overwrite a newer holder's work. Release is exactly-once
//! ([`Client::write_once`]).
//!
//! Must never: return a guard for a lock that was not granted, or keep a
//! queued waiter when the caller gives up (dropping the acquire stream
//! cancels the wait on the server).

use tonic::Streaming;

use warden_proto::etcdserverpb::{TxnRequest, TxnResponse};
use warden_proto::warden::v1 as wpb;
use warden_proto::warden::v1::acquire_response::State;
use warden_proto::warden::v1::locks_client::LocksClient;

use crate::retry::{self, Failure};
use crate::session::Session;
use crate::{Client, ClientError};

/// An exclusive lock named `name`, held on a session's lease.
///
/// ```no_run
/// # async fn demo(client: warden_client::Client) -> Result<(), warden_client::ClientError> {
/// use warden_client::{Mutex, Session};
/// let session = Session::new(&client, 10).await?;
/// let mutex = Mutex::new(&session, "jobs/nightly");
/// let guard = mutex.lock().await?;
/// println!("holding with fencing token {}", guard.token());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Mutex {
    locker: Locker,
}

/// A lock with shared (read) and exclusive (write) holds, on a session's
/// lease. Writers and readers queue fairly: a writer waiting blocks later
/// readers.
#[derive(Debug, Clone)]
pub struct RwLock {
    locker: Locker,
}

#[derive(Debug, Clone)]
struct Locker {
    client: Client,
    name: String,
    lease: i64,
    owner: String,
}

/// A granted hold. Drop it without [`LockGuard::release`] and the lock is
/// held until the session's lease ends.
#[derive(Debug)]
pub struct LockGuard {
    client: Client,
    name: String,
    token: u64,
    handle: Vec<u8>,
    stream: Streaming<wpb::AcquireResponse>,
}

impl Mutex {
    /// The exclusive lock `name` on `session`'s lease.
    pub fn new(session: &Session, name: impl Into<String>) -> Mutex {
        Mutex {
            locker: Locker::new(session, name.into()),
        }
    }

    /// Waits until the lock is granted.
    pub async fn lock(&self) -> Result<LockGuard, ClientError> {
        self.locker.wait(wpb::LockMode::Exclusive).await
    }

    /// Takes the lock if nobody holds or waits for it; `None` otherwise.
    pub async fn try_lock(&self) -> Result<Option<LockGuard>, ClientError> {
        self.locker.acquire(wpb::LockMode::Exclusive, 0).await
    }
}

impl RwLock {
    /// The lock `name` on `session`'s lease.
    pub fn new(session: &Session, name: impl Into<String>) -> RwLock {
        RwLock {
            locker: Locker::new(session, name.into()),
        }
    }

    /// Waits for a shared hold (other readers may hold it too).
    pub async fn read(&self) -> Result<LockGuard, ClientError> {
        self.locker.wait(wpb::LockMode::Shared).await
    }

    /// Waits for an exclusive hold.
    pub async fn write(&self) -> Result<LockGuard, ClientError> {
        self.locker.wait(wpb::LockMode::Exclusive).await
    }
}

impl Locker {
    fn new(session: &Session, name: String) -> Locker {
        Locker {
            client: session.client().clone(),
            name,
            lease: session.lease_id(),
            owner: format!(
                "{} pid {}",
                session.client().client_id().unwrap_or("warden-client"),
                std::process::id()
            ),
        }
    }

    /// Waits until granted in `mode`.
    async fn wait(&self, mode: wpb::LockMode) -> Result<LockGuard, ClientError> {
        self.acquire(mode, -1)
            .await?
            .ok_or_else(|| ClientError::Server {
                code: tonic::Code::Aborted,
                message: format!("lock {} was not granted", self.name),
                endpoint: String::new(),
            })
    }

    /// Asks for the lock and reads the stream until granted (`Some`), or
    /// refused without waiting (`None`, only with `wait_ms` 0).
    ///
    /// The request carries a handle drawn here and, against warden, an
    /// exactly-once tag: if the stream breaks before the answer (its member
    /// died, the connection reset), the same request is sent again and the
    /// server answers from the first attempt's queue place or grant instead
    /// of queueing a second time.
    async fn acquire(
        &self,
        mode: wpb::LockMode,
        wait_ms: i64,
    ) -> Result<Option<LockGuard>, ClientError> {
        let handle = rand::random::<[u8; HANDLE_LEN]>().to_vec();
        let req = wpb::AcquireRequest {
            name: self.name.clone(),
            mode: mode as i32,
            lease: self.lease,
            ttl: 0,
            wait_timeout_ms: wait_ms,
            priority: 0,
            owner: self.owner.clone(),
            handle: handle.clone(),
        };
        let tag = self.client.begin_once();
        let ended = |message: String| ClientError::Server {
            code: tonic::Code::Aborted,
            message,
            endpoint: String::new(),
        };
        let mut breaks = 0u32;
        loop {
            let r = req.clone();
            let mut stream = self
                .client
                .request_once(tag.as_ref(), move |ch, _| {
                    let r = r.clone();
                    async move { LocksClient::new(ch).acquire(r).await }
                })
                .await?;
            let broke = loop {
                let msg = match stream.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => {
                        break tonic::Status::unavailable(format!(
                            "the server ended the wait for lock {}",
                            self.name
                        ))
                    }
                    Err(status) => break status,
                };
                match State::try_from(msg.state) {
                    Ok(State::Granted) => {
                        return Ok(Some(LockGuard {
                            client: self.client.clone(),
                            name: self.name.clone(),
                            token: msg.token,
                            handle: if msg.handle.is_empty() {
                                handle
                            } else {
                                msg.handle
                            },
                            stream,
                        }))
                    }
                    Ok(State::Queued) => {
                        tracing::debug!(position = msg.position, "waiting for lock {}", self.name);
                    }
                    Ok(State::WouldBlock) => return Ok(None),
                    Ok(State::Lost) | Err(_) => {
                        return Err(ended(format!(
                            "waiting for lock {} ended: {}",
                            self.name, msg.reason
                        )))
                    }
                }
            };
            breaks += 1;
            let again = tag.is_some()
                && self.client.honours_once()
                && retry::classify(&broke) != Failure::Fatal
                && breaks <= MAX_STREAM_BREAKS;
            if !again {
                return Err(ClientError::Server {
                    code: broke.code(),
                    message: format!(
                        "waiting for lock {}: {}",
                        self.name,
                        retry::describe(&broke)
                    ),
                    endpoint: String::new(),
                });
            }
            tracing::debug!("lock {}: stream broke ({broke}); asking again", self.name);
            tokio::time::sleep(self.client.options().backoff.delay_random(breaks - 1)).await;
        }
    }
}

/// How many times one acquire is sent again after its stream broke.
const MAX_STREAM_BREAKS: u32 = 20;

/// Length of a lock handle.
const HANDLE_LEN: usize = 16;

impl LockGuard {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fencing token of this hold: larger than every earlier grant's.
    /// Pass it to the storage you protect, and refuse smaller ones there.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Resolves when the server reports this hold ended (lease expired,
    /// revoked, or released elsewhere), with the reason. If the stream
    /// breaks without a word (the member failed), it stays pending: watch
    /// the session's [`Session::lost`] as well.
    pub async fn lost(&mut self) -> String {
        while let Ok(Some(m)) = self.stream.message().await {
            if m.state == State::Lost as i32 {
                return m.reason;
            }
        }
        std::future::pending::<String>().await
    }

    /// Runs `txn` only while this hold is current (a newer grant of the
    /// lock makes the server refuse it with `FailedPrecondition`).
    /// Exactly-once: a retry after a failure of unknown outcome cannot
    /// apply it twice.
    pub async fn fenced_txn(&self, txn: TxnRequest) -> Result<TxnResponse, ClientError> {
        let req = wpb::FencedTxnRequest {
            name: self.name.clone(),
            token: self.token,
            txn: Some(txn),
            handle: self.handle.clone(),
        };
        self.client
            .write_once(move |ch, t| {
                let mut r = tonic::Request::new(req.clone());
                r.set_timeout(t);
                async move { LocksClient::new(ch).fenced_txn(r).await }
            })
            .await
    }

    /// Releases the hold; the next waiter in the queue is granted. The
    /// guard stays usable only as a stale proof: a fenced write with it is
    /// refused from now on.
    pub async fn release(&self) -> Result<(), ClientError> {
        let req = wpb::ReleaseRequest {
            name: self.name.clone(),
            token: self.token,
            handle: self.handle.clone(),
        };
        self.client
            .write_once(move |ch, t| {
                let mut r = tonic::Request::new(req.clone());
                r.set_timeout(t);
                async move { LocksClient::new(ch).release(r).await }
            })
            .await
            .map(|_| ())
    }
}
