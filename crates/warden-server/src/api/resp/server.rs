//! The RESP listener: accepts connections (at most [`MAX_CONNECTIONS`], and
//! at most a quarter of the open-file limit: [`crate::tls::max_connections`]),
//! reads requests through the codec, runs them one after another on the
//! connection's [`Session`] and writes the replies back in order.
//!
//! Pipelining: every complete request already received is answered before
//! the replies are flushed, so a client that sends a batch gets one write
//! back. Memory per connection: the input buffer holds at most one
//! incomplete request (bounded by the codec's limits) plus one read; the
//! output is flushed whenever it passes `FLUSH_AT`. Memory per member: a
//! connection whose buffer passes `BIG_REQUEST` bytes (a large request on
//! its way) must hold one of [`BIG_REQUESTS`] permits to read on, so many
//! clients sending large requests at once wait for each other instead of
//! each holding up to the request limit. The wait is at most [`BIG_WAIT`],
//! and a connection holding a permit that sends nothing for that long is
//! closed: stalled clients cannot keep the permits.
//!
//! Must never: read past a protocol error (the stream cannot be resynced,
//! so the error is answered and the connection closed), or let one
//! connection's failure reach another.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::codec::{decode, frame_len_resume, Limits, Reply, Scan};
use super::commands::{Outcome, Session};
use crate::api::auth::{AuthSettings, Gate};
use crate::node::Node;

/// Most RESP connections at once (Redis's default `maxclients`).
pub const MAX_CONNECTIONS: usize = 10_000;

/// Replies buffered before they are written out mid-batch.
const FLUSH_AT: usize = 64 * 1024;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;

/// Buffered request bytes past which a connection needs a big-request
/// permit to read on.
const BIG_REQUEST: usize = 64 * 1024;

/// Connections that may buffer more than `BIG_REQUEST` at once.
pub const BIG_REQUESTS: usize = 64;

/// How long a connection waits for a big-request permit, and how long one
/// holding a permit may go without sending a byte: a connection that stalls
/// in the middle of a large request is closed, so stalled clients cannot
/// keep every permit (and every other client's large requests waiting)
/// for good.
pub const BIG_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What every connection shares.
pub struct Shared {
    pub node: Arc<Node>,
    pub gate: Arc<Gate>,
    pub limits: Limits,
    pub max_request_bytes: usize,
    next_id: std::sync::atomic::AtomicU64,
    /// One permit per open connection.
    pub(super) slots: Arc<Semaphore>,
    /// Connections served at once: the permits `slots` started with.
    pub(super) max_connections: usize,
    /// Read-modify-writes of one key run one at a time on this member
    /// (striped by key hash): concurrent ones would only fail each other's
    /// compare, and the member nearest the leader would starve the rest.
    rmw_stripes: Vec<tokio::sync::Mutex<()>>,
    /// Permits to buffer a large request (see the module doc).
    big: Arc<Semaphore>,
}

/// Stripes of `Shared::rmw_stripes`.
const RMW_STRIPES: usize = 64;

impl Shared {
    /// Serialises read-modify-writes of `key` on this member.
    pub async fn rmw_lock(&self, key: &[u8]) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let i = (h.finish() % RMW_STRIPES as u64) as usize;
        Some(self.rmw_stripes.get(i)?.lock().await)
    }
}

impl Shared {
    /// A new connection id (CLIENT ID), from 1.
    fn next_id(&self) -> u64 {
        self.next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .saturating_add(1)
    }
}

/// Serves RESP on `listener` until `shutdown` resolves.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    max_request_bytes: usize,
    auth_settings: AuthSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let max_connections = crate::tls::max_connections("resp").min(MAX_CONNECTIONS);
    let shared = Arc::new(Shared {
        gate: Gate::new(node.clone(), auth_settings),
        node,
        limits: Limits::for_request_bytes(max_request_bytes),
        max_request_bytes,
        next_id: std::sync::atomic::AtomicU64::new(0),
        slots: Arc::new(Semaphore::new(max_connections)),
        max_connections,
        rmw_stripes: (0..RMW_STRIPES)
            .map(|_| tokio::sync::Mutex::new(()))
            .collect(),
        big: Arc::new(Semaphore::new(BIG_REQUESTS)),
    });
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: back off, keep serving.
                    tracing::warn!("resp: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = shared.slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = connection(shared, stream, peer).await {
                tracing::debug!(%peer, "resp connection ended: {e}");
            }
        });
    }
}

async fn refuse(mut stream: TcpStream) {
    let _ = stream
        .write_all(b"-ERR max number of clients reached\r\n")
        .await;
}

/// Runs one connection until the client leaves, says QUIT, or breaks the
/// protocol.
async fn connection(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let limits = shared.limits;
    let mut session = Session::new(shared.clone(), peer, shared.next_id());
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut big: Option<tokio::sync::OwnedSemaphorePermit> = None;
    // Where the scan of the incomplete request at the buffer's start
    // stopped (offsets from that request's start, which the drain below
    // moves to 0).
    let mut scan: Option<Scan> = None;
    loop {
        let mut start = 0;
        loop {
            let rest = buf.get(start..).unwrap_or_default();
            match frame_len_resume(rest, &limits, &mut scan) {
                Ok(Some(n)) => {
                    let frame = rest.get(..n).unwrap_or_default();
                    start += n;
                    let args = match decode(frame) {
                        Ok(a) => a,
                        Err(e) => {
                            return fail(&mut stream, &mut out, session.proto(), e).await;
                        }
                    };
                    if args.is_empty() {
                        continue;
                    }
                    let (reply, outcome) = session.run(args).await;
                    reply.encode(session.proto(), &mut out);
                    if outcome == Outcome::Close {
                        stream.write_all(&out).await?;
                        return stream.shutdown().await;
                    }
                    if out.len() >= FLUSH_AT {
                        stream.write_all(&out).await?;
                        out.clear();
                    }
                }
                Ok(None) => break,
                Err(e) => return fail(&mut stream, &mut out, session.proto(), e).await,
            }
        }
        buf.drain(..start);
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
            if out.capacity() > FLUSH_AT * 4 {
                out.shrink_to(READ_CHUNK);
            }
        }
        if buf.is_empty() && buf.capacity() > READ_CHUNK * 4 {
            buf.shrink_to(READ_CHUNK);
        }
        if buf.len() < BIG_REQUEST {
            big = None;
        } else if big.is_none() {
            match tokio::time::timeout(BIG_WAIT, shared.big.clone().acquire_owned()).await {
                Ok(permit) => {
                    big = Some(permit.map_err(|_| std::io::Error::other("server stopping"))?)
                }
                Err(_) => {
                    let msg = format!(
                        "ERR warden: {BIG_REQUESTS} large requests are already arriving on this \
                         member; none finished within {} s; try again",
                        BIG_WAIT.as_secs()
                    );
                    return close_with(&mut stream, &mut out, session.proto(), msg).await;
                }
            }
        }
        buf.reserve(READ_CHUNK);
        let read = stream.read_buf(&mut buf);
        let n = if big.is_some() {
            match tokio::time::timeout(BIG_WAIT, read).await {
                Ok(n) => n?,
                Err(_) => {
                    let msg = format!(
                        "ERR warden: a large request stalled for {} s; closing the connection",
                        BIG_WAIT.as_secs()
                    );
                    return close_with(&mut stream, &mut out, session.proto(), msg).await;
                }
            }
        } else {
            read.await?
        };
        if n == 0 {
            return Ok(());
        }
    }
}

/// Answers `msg` as an error and closes the connection (in the middle of a
/// request, which cannot be resynced).
async fn close_with(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    proto: u8,
    msg: String,
) -> std::io::Result<()> {
    Reply::err(msg).encode(proto, out);
    stream.write_all(out).await?;
    stream.shutdown().await
}

/// Answers a protocol error and closes the connection.
async fn fail(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    proto: u8,
    e: super::codec::ProtocolError,
) -> std::io::Result<()> {
    close_with(stream, out, proto, format!("ERR {e}")).await
}
