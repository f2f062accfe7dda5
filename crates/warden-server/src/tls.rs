//! TLS on the client and peer ports, with rustls over the `ring` provider
//! (pure Rust and C with no system OpenSSL, builds offline on every target
//! we ship; aws-lc would add a CMake build for no gain here).
//!
//! - [`ServerTls`]: a port's certificate, key and, with client certificate
//!   authentication (etcd's `--client-cert-auth`, `--peer-client-cert-auth`),
//!   the CA that client certificates must chain to. The files are checked
//!   again whenever a connection arrives and reloaded when they changed, so
//!   a certificate replaced on disk serves the next connection with no
//!   restart; a replacement that does not load is logged and the previous
//!   configuration kept.
//! - [`incoming`]: the accept loop of a TLS port. Handshakes run in their
//!   own tasks, at most [`MAX_HANDSHAKES`] at once and each within
//!   [`HANDSHAKE_TIMEOUT`], so a client that connects and sends nothing
//!   holds one socket for a bounded time and never stalls other clients.
//! - [`TlsFiles::as_client`]: what a member presents when it dials a peer
//!   (or, when joining, a member's client port), as a
//!   `warden_client::TlsOptions`: read from disk for each new connection.
//!
//! Must never: accept a connection whose handshake failed, or whose client
//! certificate is missing or does not chain to the CA when client
//! certificate authentication is on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// Most TLS handshakes in progress on one port.
pub const MAX_HANDSHAKES: usize = 256;

/// Longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A port's TLS files, under etcd's flag names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--cert-file` / `--peer-cert-file`: PEM certificate chain.
    pub cert: PathBuf,
    /// `--key-file` / `--peer-key-file`: PEM private key.
    pub key: PathBuf,
    /// `--trusted-ca-file` / `--peer-trusted-ca-file`: PEM CA certificates
    /// that the other side's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// `--client-cert-auth` / `--peer-client-cert-auth`: require a client
    /// certificate chaining to `ca`.
    pub client_cert_auth: bool,
}

/// Why TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} {}: {reason}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Config(String),
}

fn file_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(String) -> TlsError + 'a {
    move |reason| TlsError::File {
        what,
        path: path.to_path_buf(),
        reason,
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain (at least one certificate).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err("certificate", path)(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err("certificate", path)(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err("certificate", path)(
            "no PEM certificate in it".into(),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err("private key", path)(e.to_string()))
}

fn read_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(path)? {
        roots
            .add(c)
            .map_err(|e| file_err("CA certificate", path)(e.to_string()))?;
    }
    Ok(roots)
}

/// Builds the rustls server configuration of `files`.
fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = if files.client_cert_auth {
        let ca = files.ca.as_deref().ok_or_else(|| {
            TlsError::Config("client certificate authentication needs a trusted CA file".into())
        })?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(read_roots(ca)?),
            provider(),
        )
        .build()
        .map_err(|e| TlsError::Config(format!("client verifier from {}: {e}", ca.display())))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(format!("{}: {e}", files.cert.display())))?;
    // gRPC is HTTP/2 only.
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// Modification time and length of each file: what a reload compares.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &TlsFiles) -> Stamp {
    [Some(&files.cert), Some(&files.key), files.ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// A port's server TLS configuration, reloaded when its files change.
pub struct ServerTls {
    files: TlsFiles,
    current: Mutex<(Stamp, Arc<rustls::ServerConfig>)>,
}

impl ServerTls {
    /// Loads `files`; an error here stops the member at startup.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let s = stamp(&files);
        let cfg = server_config(&files)?;
        Ok(ServerTls {
            files,
            current: Mutex::new((s, Arc::new(cfg))),
        })
    }

    /// The configuration to use for a new connection: reloaded first if a
    /// file changed since the last load (kept as it was, with a warning, if
    /// the new files do not load, e.g. a key written before its certificate).
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        let now = stamp(&self.files);
        let mut cur = match self.current.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        if cur.0 != now {
            match server_config(&self.files) {
                Ok(cfg) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS files changed: reloaded");
                    *cur = (now, Arc::new(cfg));
                }
                Err(e) => {
                    tracing::warn!(
                        "TLS files changed but do not load, keeping the previous ones: {e}"
                    );
                    cur.0 = now;
                }
            }
        }
        cur.1.clone()
    }
}

/// Serves `svc` with `server`'s settings on `listener` until `shutdown`:
/// over TLS with `tls`, else plaintext. Either way every connection gets
/// TCP_NODELAY (`Server::tcp_nodelay` does not apply to a given listener,
/// and without it small responses wait ~40 ms for a delayed ACK).
pub async fn serve<S, B>(
    server: tonic::transport::Server,
    svc: S,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    port: &'static str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error>
where
    S: tower::Service<
            axum::http::Request<tonic::body::Body>,
            Response = axum::http::Response<B>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let slots = Arc::new(Semaphore::new(max_connections(port)));
    match tls {
        Some(tls) => {
            server
                .serve_with_incoming_shutdown(svc, incoming(listener, tls, port, slots), shutdown)
                .await
        }
        None => {
            server
                .serve_with_incoming_shutdown(svc, plain_incoming(listener, port, slots), shutdown)
                .await
        }
    }
}

/// Raises this process's soft limit of open files to its hard limit (at
/// most 2^20), as Go's runtime does for etcd, and returns the soft limit
/// then in force. Distributions often start services with a soft limit of
/// 1024, which a few hundred client connections and the member's own files
/// exceed.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    let want = now.maximum.unwrap_or(MAX_FD_LIMIT).min(MAX_FD_LIMIT);
    if now.current.is_some_and(|c| c < want) {
        let raised = Rlimit {
            current: Some(want),
            maximum: now.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!("raising the open-file limit to {want}: {e}");
        }
    }
    fd_limit()
}

/// Ceiling of [`raise_fd_limit`].
const MAX_FD_LIMIT: u64 = 1 << 20;

/// The soft limit of open files (2^20 when unlimited).
pub fn fd_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(MAX_FD_LIMIT)
}

/// Connections a port serves at once: a share of the open-file limit, so
/// that connections can never take the descriptors the member needs for
/// its own files (a snapshot that cannot be created stops the member), with
/// a ceiling. Clients' ports (`client`, `resp`) get a quarter each, at most
/// 10 000 (Redis's `maxclients`); the others a sixteenth, at most 1 024.
/// Past it, the port accepts nothing until a connection closes (RESP
/// answers `max number of clients reached`).
pub fn max_connections(port: &str) -> usize {
    let (share, ceiling) = match port {
        "client" | "resp" => (4, 10_000),
        _ => (16, 1_024),
    };
    usize::try_from((fd_limit() / share).clamp(16, ceiling)).unwrap_or(16)
}

/// A connection holding one of its port's [`max_connections`] slots until it
/// is dropped; reads, writes and its address are the stream's.
pub struct Counted<S> {
    inner: S,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Counted<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Waits for a free connection slot of `port`, saying so (at most every
/// [`FULL_WARN_EVERY`]) when there is none; `None` when the server stopped
/// taking connections.
async fn slot(
    slots: &Arc<Semaphore>,
    port: &'static str,
    last_warned: &mut Option<std::time::Instant>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if let Ok(s) = slots.clone().try_acquire_owned() {
        return Some(s);
    }
    if last_warned.is_none_or(|t| t.elapsed() >= FULL_WARN_EVERY) {
        *last_warned = Some(std::time::Instant::now());
        tracing::warn!(
            port,
            max = max_connections(port),
            "connection limit reached: accepting again when a connection closes"
        );
    }
    slots.clone().acquire_owned().await.ok()
}

const FULL_WARN_EVERY: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` for `port`, at most `slots` open at
/// once (a connection holds its slot from before it is made ready until it
/// closes). Each is served once `prepare` has made it ready within
/// [`HANDSHAKE_TIMEOUT`] (its first bytes arrived, or its TLS handshake
/// finished); one that fails or takes longer is dropped and gives its slot
/// back, so connections that never speak cannot hold a port's slots for
/// good. Accepting backs off when it fails (out of descriptors: retrying at
/// once would spin a core). Ends when the server drops the stream.
fn accept_loop<S, F, Fut>(
    listener: TcpListener,
    port: &'static str,
    slots: Arc<Semaphore>,
    prepare: F,
) -> ReceiverStream<std::io::Result<Counted<S>>>
where
    S: Send + 'static,
    F: Fn(TcpStream, std::net::SocketAddr) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut last_warned = None;
        loop {
            let slot = tokio::select! {
                _ = tx.closed() => return,
                s = slot(&slots, port, &mut last_warned) => match s {
                    Some(s) => s,
                    None => return,
                },
            };
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (tcp, from) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(port, "accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let ready = prepare(tcp, from);
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, ready).await {
                    Ok(Ok(inner)) => {
                        let _ = tx.send(Ok(Counted { inner, _slot: slot })).await;
                    }
                    Ok(Err(e)) => tracing::debug!(port, %from, "connection dropped: {e}"),
                    Err(_) => tracing::debug!(
                        port,
                        %from,
                        "connection dropped: not ready within {} s",
                        HANDSHAKE_TIMEOUT.as_secs()
                    ),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Accepts plain TCP connections on `listener` ([`accept_loop`]): each is
/// served once its first bytes arrive (HTTP clients speak first).
fn plain_incoming(
    listener: TcpListener,
    port: &'static str,
    slots: Arc<Semaphore>,
) -> ReceiverStream<std::io::Result<Counted<TcpStream>>> {
    accept_loop(listener, port, slots, |tcp, _| async move {
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(tcp)
    })
}

/// Accepts TLS connections on `listener` (see `accept_loop`): the stream of
/// established sessions for `tonic`'s `serve_with_incoming`, at most
/// [`MAX_HANDSHAKES`] handshakes in progress at once (a connection past it
/// is dropped).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    port: &'static str,
    slots: Arc<Semaphore>,
) -> ReceiverStream<std::io::Result<Counted<TlsStream<TcpStream>>>> {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    accept_loop(listener, port, slots, move |tcp, from| {
        let permit = handshakes.clone().try_acquire_owned();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
        async move {
            let Ok(_permit) = permit else {
                tracing::warn!(port, %from, "too many TLS handshakes in progress: connection dropped");
                return Err(std::io::Error::other("too many TLS handshakes in progress"));
            };
            acceptor.accept(tcp).await
        }
    })
}

impl TlsFiles {
    /// The same files as a client presents them when dialing (a member
    /// dialing its peers with the peer files).
    pub fn as_client(&self) -> warden_client::TlsOptions {
        warden_client::TlsOptions {
            ca: self.ca.clone(),
            cert: Some(self.cert.clone()),
            key: Some(self.key.clone()),
        }
    }
}
