//! etcd's `Auth` service, and the gate every other service asks who is
//! calling and whether they may.
//!
//! Owns: resolving a request's caller ([`Gate::caller`]: the `token`
//! metadata etcd clients send after `Authenticate`, else the common name of
//! a verified client certificate, as etcd does with `--client-cert-auth`),
//! simple tokens (signed with HMAC-SHA256 under the key the auth store
//! holds, so any member can check a token another issued; they name the
//! user's generation, so a password change or a delete ends them), password
//! hashing and checking with bcrypt (off the async workers, at most
//! [`HASHING_SLOTS`] at once), and the brute-force brake on `Authenticate`
//! (failures counted per client address).
//!
//! Permission rules live in `warden_core::state::auth`; writes are checked
//! there again when applied, in log order.
//!
//! Must never: log or return a password, a hash or a token key; check a
//! password on an async worker; let one address try passwords without limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::error::{node_status, state_status};
use super::header;
use crate::node::peer_service::grpc_timeout;
use crate::node::types::Request as NodeRequest;
use crate::node::Node;
use warden_core::state::auth::{AuthCommand, AuthError, AuthStore, PermKind, Permission};
use warden_core::state::{CommandResult, StateError};
use warden_proto::authpb;
use warden_proto::etcdserverpb as pb;

/// The longest password accepted when set: bcrypt's input limit (it reads
/// no more, so a longer password would be stored cut, and its end never
/// checked). Go's bcrypt, and so etcd, refuses longer ones too. Passwords
/// stored by older builds, cut, still authenticate as they did.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// The gRPC metadata key etcd clients put their token under.
pub const TOKEN_METADATA: &str = "token";

/// Where etcd also looks for it (its gateway passes the HTTP
/// `Authorization` header on as this).
pub const TOKEN_METADATA_HTTP: &str = "authorization";

/// Password checks and hashes running at once (each is ~50-100 ms of CPU
/// at etcd's default cost): the rest wait, so a flood of `Authenticate`
/// calls cannot take every core.
pub const HASHING_SLOTS: usize = 2;

/// Failed `Authenticate` calls one client address may make per
/// [`FAILURE_WINDOW`] before it is refused without a password check.
///
/// Not lower: etcdctl 3.4 (and Go clients of that clientv3) sends one
/// `Authenticate` per endpoint it was given when a password is wrong,
/// through a round-robin connection that may put all of them on one
/// member, so a single mistyped password can count three failures on a
/// three-member cluster. At 5, two typos in a row locked the user out of
/// that member for a minute (`tests/auth.rs`, the etcdctl script, failed
/// now and then on exactly that).
pub const MAX_FAILURES: u32 = 10;

/// The window [`MAX_FAILURES`] counts over.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Client addresses the failure counter tracks at most (the oldest window
/// is forgotten first).
const MAX_TRACKED_ADDRS: usize = 4096;

/// Longest token accepted (ours are ~100 bytes): a bound on the work a
/// forged one costs.
const MAX_TOKEN_LEN: usize = 1024;

/// etcd's default `--bcrypt-cost`.
pub const DEFAULT_BCRYPT_COST: u32 = 10;

/// etcd's default `--auth-token-ttl` for simple tokens.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

/// Who sent a request: a user name, or nobody (no credentials, or auth
/// off). The auth store decides what either may do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller(pub Option<String>);

impl Caller {
    /// The user name, if any.
    pub fn user(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// Auth settings of a member (`warden server` flags).
#[derive(Clone, Copy, Debug)]
pub struct AuthSettings {
    /// How long a token from `Authenticate` is good for (`--auth-token-ttl`).
    pub token_ttl: Duration,
    /// bcrypt cost of new password hashes (`--bcrypt-cost`).
    pub bcrypt_cost: u32,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            token_ttl: DEFAULT_TOKEN_TTL,
            bcrypt_cost: DEFAULT_BCRYPT_COST,
        }
    }
}

/// Failed logins per client address.
#[derive(Default)]
struct Failures {
    by_addr: HashMap<IpAddr, (Instant, u32)>,
}

impl Failures {
    /// Whether `addr` may try now.
    fn allowed(&mut self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        match self.by_addr.get(&addr) {
            Some((since, n)) if now.duration_since(*since) < FAILURE_WINDOW => {
                if *n >= MAX_FAILURES {
                    Err(FAILURE_WINDOW.saturating_sub(now.duration_since(*since)))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    fn failed(&mut self, addr: IpAddr, now: Instant) {
        if self.by_addr.len() >= MAX_TRACKED_ADDRS && !self.by_addr.contains_key(&addr) {
            self.by_addr
                .retain(|_, (since, _)| now.duration_since(*since) < FAILURE_WINDOW);
            if self.by_addr.len() >= MAX_TRACKED_ADDRS {
                let oldest = self
                    .by_addr
                    .iter()
                    .min_by_key(|(_, (since, _))| *since)
                    .map(|(a, _)| *a);
                if let Some(a) = oldest {
                    self.by_addr.remove(&a);
                }
            }
        }
        let e = self.by_addr.entry(addr).or_insert((now, 0));
        if now.duration_since(e.0) >= FAILURE_WINDOW {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
    }

    /// Counts an attempt from `addr` as a failure before its password is
    /// checked (so concurrent or abandoned attempts count too), or refuses
    /// it when the address is braked.
    fn charge(&mut self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let addr = bucket(addr);
        self.allowed(addr, now)?;
        self.failed(addr, now);
        Ok(())
    }

    /// Takes back the charge of an attempt that succeeded. Only that one:
    /// a success with one account does not wipe the failures of guesses at
    /// another from the same address.
    fn refund(&mut self, addr: IpAddr) {
        if let Some(e) = self.by_addr.get_mut(&bucket(addr)) {
            e.1 = e.1.saturating_sub(1);
        }
    }
}

/// One authentication attempt's charge against its address: taken before
/// the password is checked, so attempts in flight count, and given back
/// when the attempt ends in anything but a wrong password (a success, a
/// refusal before checking, a deadline, a caller that hung up and learnt
/// nothing). Only `keep` turns it into a recorded failure.
struct Charge<'a> {
    failures: &'a Mutex<Failures>,
    addr: IpAddr,
    kept: bool,
}

impl<'a> Charge<'a> {
    fn take(failures: &'a Mutex<Failures>, addr: IpAddr, now: Instant) -> Result<Self, Status> {
        failures
            .lock()
            .map_err(|_| Status::internal("auth failure counter poisoned"))?
            .charge(addr, now)
            .map_err(|wait| {
                Status::resource_exhausted(format!(
                    "warden: too many failed authentications from {addr}; retry in {} s",
                    wait.as_secs().max(1)
                ))
            })?;
        Ok(Charge {
            failures,
            addr,
            kept: false,
        })
    }

    fn keep(&mut self) {
        self.kept = true;
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        if !self.kept {
            if let Ok(mut f) = self.failures.lock() {
                f.refund(self.addr);
            }
        }
    }
}

/// The address a failure is counted against: IPv4 as is, IPv6 by its /64
/// (one host usually owns a whole /64, so counting single addresses would
/// let it guess without limit).
fn bucket(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::from(o)
        }
    }
}

/// Resolves callers and checks them. One per member, shared by every
/// service.
pub struct Gate {
    node: Arc<Node>,
    settings: AuthSettings,
    failures: Mutex<Failures>,
    hashing: Arc<Semaphore>,
}

fn auth_status(e: AuthError) -> Status {
    state_status(StateError::Auth(e))
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8], user: &str, generation: u64, expires: u64) -> Option<Vec<u8>> {
    let mut m = HmacSha256::new_from_slice(key).ok()?;
    m.update(user.as_bytes());
    m.update(&[0]);
    m.update(&generation.to_le_bytes());
    m.update(&expires.to_le_bytes());
    Some(m.finalize().into_bytes().to_vec())
}

/// A token for `user` at `generation`, good until `expires` (Unix
/// seconds): `base64(user).generation.expires.base64(hmac)`.
pub fn sign_token(key: &[u8], user: &str, generation: u64, expires: u64) -> Option<String> {
    let m = mac(key, user, generation, expires)?;
    Some(format!(
        "{}.{generation}.{expires}.{}",
        URL_SAFE_NO_PAD.encode(user),
        URL_SAFE_NO_PAD.encode(m)
    ))
}

/// The user a token stands for, if the store's key signed it, it has not
/// expired at `now`, and the user still has the generation it names.
pub fn verify_token(store: &AuthStore, token: &str, now: u64) -> Result<String, AuthError> {
    let bad = AuthError::InvalidAuthToken;
    if token.len() > MAX_TOKEN_LEN || store.token_key().is_empty() {
        return Err(bad);
    }
    let mut parts = token.split('.');
    let (Some(u), Some(g), Some(e), Some(m), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad);
    };
    let user = URL_SAFE_NO_PAD
        .decode(u)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(AuthError::InvalidAuthToken)?;
    let generation: u64 = g.parse().map_err(|_| AuthError::InvalidAuthToken)?;
    let expires: u64 = e.parse().map_err(|_| AuthError::InvalidAuthToken)?;
    let given = URL_SAFE_NO_PAD
        .decode(m)
        .map_err(|_| AuthError::InvalidAuthToken)?;
    let want =
        mac(store.token_key(), &user, generation, expires).ok_or(AuthError::InvalidAuthToken)?;
    if !bool::from(want.ct_eq(&given)) || expires <= now {
        return Err(bad);
    }
    match store.user(&user) {
        Some(u) if u.generation == generation => Ok(user),
        _ => Err(bad),
    }
}

/// The common name of a DER certificate's subject.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// Read permission on `[key, range_end)` by `node`'s auth store (for code
/// that holds the node but not the gate: the lock and election recipes).
pub fn check_range_at(
    node: &Node,
    caller: &Caller,
    key: &[u8],
    range_end: &[u8],
) -> Result<(), Status> {
    node.with_state(|d| d.auth.check_range(caller.user(), key, range_end))
        .map_err(node_status)?
        .map_err(auth_status)
}

impl Gate {
    pub fn new(node: Arc<Node>, settings: AuthSettings) -> Arc<Gate> {
        Arc::new(Gate {
            node,
            settings,
            failures: Mutex::new(Failures::default()),
            hashing: Arc::new(Semaphore::new(HASHING_SLOTS)),
        })
    }

    /// Reads the auth store of this member's applied state.
    fn store<T>(&self, f: impl FnOnce(&AuthStore) -> T) -> Result<T, Status> {
        self.node.with_state(|d| f(&d.auth)).map_err(node_status)
    }

    /// Who sent `req`: the user of its token, else (with client
    /// certificates) the certificate's common name, else nobody. A token
    /// that is not good (forged, expired, of a deleted user or an old
    /// password) is refused with etcd's `invalid auth token`, so clients
    /// authenticate again. With auth off everyone is nobody.
    pub fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let token = req
            .metadata()
            .get(TOKEN_METADATA)
            .or_else(|| req.metadata().get(TOKEN_METADATA_HTTP))
            .map(|v| {
                v.to_str()
                    .map_err(|_| auth_status(AuthError::InvalidAuthToken))
            })
            .transpose()?;
        let now = now_unix();
        let resolved = self.store(|s| {
            if !s.enabled() {
                return Ok(None);
            }
            match token {
                Some(t) => verify_token(s, t, now).map(Some),
                None => Ok(None),
            }
        })?;
        match resolved {
            Ok(Some(user)) => return Ok(Caller(Some(user))),
            Ok(None) => {}
            Err(e) => return Err(auth_status(e)),
        }
        if token.is_none() && self.store(AuthStore::enabled)? {
            if let Some(certs) = req.peer_certs() {
                if let Some(cn) = certs.first().and_then(|c| common_name(c)) {
                    return Ok(Caller(Some(cn)));
                }
            }
        }
        Ok(Caller(None))
    }

    /// Read permission on `[key, range_end)` by this member's auth store.
    pub fn check_range(&self, caller: &Caller, key: &[u8], range_end: &[u8]) -> Result<(), Status> {
        check_range_at(&self.node, caller, key, range_end)
    }

    /// Write permission on `[key, range_end)` by this member's auth store
    /// (writes are checked again when applied).
    pub fn check_write(&self, caller: &Caller, key: &[u8], range_end: &[u8]) -> Result<(), Status> {
        self.store(|s| s.check_write(caller.user(), key, range_end))?
            .map_err(auth_status)
    }

    /// The root role, for admin calls.
    pub fn check_admin(&self, caller: &Caller) -> Result<(), Status> {
        self.store(|s| s.check_admin(caller.user()))?
            .map_err(auth_status)
    }

    /// Any known user (calls that need no key permission).
    pub fn check_authenticated(&self, caller: &Caller) -> Result<(), Status> {
        self.store(|s| s.check_authenticated(caller.user()))?
            .map_err(auth_status)
    }

    /// What renewing a lease (`write`) or reading its TTL and keys needs
    /// (etcd's `checkLeaseRenew` / `checkLeaseTimeToLive`): root, or
    /// write (read) permission on every key attached to it. `None` checks
    /// every lease (`LeaseLeases`).
    pub fn check_lease(&self, caller: &Caller, id: Option<i64>, write: bool) -> Result<(), Status> {
        self.node
            .with_state(|d| {
                let s = &d.auth;
                if !s.enabled() {
                    return Ok(());
                }
                s.check_authenticated(caller.user())?;
                let ids: Vec<i64> = match id {
                    Some(id) => vec![id],
                    None => d.kv.leases().iter().map(|l| l.id).collect(),
                };
                // Keys and the names of the locks held on the lease alike:
                // renewing or revoking it decides their fate.
                for id in ids {
                    s.check_lease_access(caller.user(), id, &d.kv, write)?;
                }
                Ok(())
            })
            .map_err(node_status)?
            .map_err(auth_status)
    }

    /// `check_admin` of the caller of `req`, in one step.
    /// Whether auth is on (as this member's applied state says).
    pub fn auth_enabled(&self) -> Result<bool, Status> {
        self.store(AuthStore::enabled)
    }

    pub fn admin<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let c = self.caller(req)?;
        self.check_admin(&c)?;
        Ok(c)
    }

    /// Runs a bcrypt job on a blocking thread once a hashing slot is free.
    async fn hash_job<T: Send + 'static>(
        &self,
        deadline: Instant,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        let slot = tokio::time::timeout_at(deadline, self.hashing.clone().acquire_owned())
            .await
            .map_err(|_| Status::unavailable("etcdserver: request timed out"))?
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        // The slot goes with the job: a caller that gives up does not free
        // it while the hash still runs.
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            job()
        })
        .await
        .map_err(|e| Status::internal(format!("password hashing task ended: {e}")))
    }

    /// The bcrypt hash a new password gets, or `None` for no password.
    async fn password_hash(
        &self,
        password: &str,
        hashed: &str,
        no_password: bool,
        deadline: Instant,
    ) -> Result<Option<String>, Status> {
        if no_password {
            return Ok(None);
        }
        if !hashed.is_empty() {
            // A client that hashed it already (etcd's `hashedPassword`).
            hashed.parse::<bcrypt::HashParts>().map_err(|_| {
                Status::invalid_argument("warden: hashed_password is not a bcrypt hash")
            })?;
            return Ok(Some(hashed.to_owned()));
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(Status::invalid_argument(format!(
                "warden: a password may be at most {MAX_PASSWORD_BYTES} bytes (bcrypt reads no \
                 more: a longer one would be cut, and its end never checked)"
            )));
        }
        let password = password.to_owned();
        let cost = self.settings.bcrypt_cost;
        self.hash_job(deadline, move || bcrypt::hash(password, cost))
            .await?
            .map(Some)
            .map_err(|e| Status::internal(format!("hashing the password failed: {e}")))
    }

    /// Applies an auth change through the log.
    async fn change(
        &self,
        cmd: AuthCommand,
        deadline: Instant,
    ) -> Result<Option<pb::ResponseHeader>, Status> {
        let resp = self
            .node
            .write(NodeRequest::Auth(cmd), deadline)
            .await
            .map_err(node_status)?;
        match resp.result {
            Ok(Some(CommandResult::Auth)) => Ok(Some(header(&self.node, resp.revision))),
            Ok(_) => Err(super::unexpected()),
            Err(e) => Err(state_status(e)),
        }
    }

    /// Checks `name`'s password (etcd `Authenticate`, and RESP's `AUTH`)
    /// under the brute-force brake of `addr`; returns the user's
    /// generation and the token key. Auth must be enabled.
    pub async fn check_password(
        &self,
        addr: IpAddr,
        name: &str,
        password: String,
        deadline: Instant,
    ) -> Result<(u64, Vec<u8>), Status> {
        let mut charge = Charge::take(&self.failures, addr, Instant::now())?;
        let found = self
            .read(deadline, |s| {
                if !s.enabled() {
                    return Err(AuthError::AuthNotEnabled);
                }
                let key = s.token_key().to_vec();
                Ok(s.user(name)
                    .map(|u| (u.password_hash.clone(), u.generation, key)))
            })
            .await?
            .map_err(auth_status)?;
        // An unknown user (or one without a password) costs one bcrypt
        // round too, so timing does not tell which names exist.
        let cost = self.settings.bcrypt_cost;
        let (ok, generation, key) = match found {
            Some((Some(hash), g, k)) => {
                let ok = self
                    .hash_job(deadline, move || {
                        bcrypt::verify(password, &hash).unwrap_or(false)
                    })
                    .await?;
                (ok, Some(g), k)
            }
            _ => {
                self.hash_job(deadline, move || bcrypt::hash(password, cost).is_ok())
                    .await?;
                (false, None, Vec::new())
            }
        };
        match (ok, generation) {
            (true, Some(g)) => Ok((g, key)),
            _ => {
                // A wrong password keeps its charge; every other ending
                // (success, auth not enabled, a timeout, a caller that hung
                // up) gives it back when `charge` drops.
                charge.keep();
                tracing::info!(%addr, user = ?name, "authentication failed");
                Err(auth_status(AuthError::AuthFailed))
            }
        }
    }

    /// Reads the auth store after a read barrier (what the leader committed
    /// before this call is applied here).
    async fn read<T>(
        &self,
        deadline: Instant,
        f: impl FnOnce(&AuthStore) -> T,
    ) -> Result<T, Status> {
        self.node.linearize(deadline).await.map_err(node_status)?;
        self.store(f)
    }
}

/// The `Auth` service.
pub struct AuthService {
    pub gate: Arc<Gate>,
}

impl AuthService {
    fn deadline<T>(&self, req: &Request<T>) -> Instant {
        self.gate.node.deadline(grpc_timeout(req))
    }

    fn hdr(&self) -> Option<pb::ResponseHeader> {
        Some(header(&self.gate.node, self.gate.node.revision()))
    }

    /// Management calls need root while auth is on.
    fn manage<T>(&self, req: &Request<T>) -> Result<(Caller, Instant), Status> {
        let c = self.gate.admin(req)?;
        Ok((c, self.deadline(req)))
    }
}

fn name_of(name: &str, empty: AuthError) -> Result<String, Status> {
    if name.is_empty() {
        return Err(auth_status(empty));
    }
    Ok(name.to_owned())
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthService {
    async fn auth_enable(
        &self,
        r: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        let (_, deadline) = self.manage(&r)?;
        let mut token_key = vec![0u8; 32];
        rand::Rng::fill(&mut rand::rng(), token_key.as_mut_slice());
        let header = self
            .gate
            .change(AuthCommand::Enable { token_key }, deadline)
            .await?;
        Ok(Response::new(pb::AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        r: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        let (_, deadline) = self.manage(&r)?;
        let header = self.gate.change(AuthCommand::Disable, deadline).await?;
        Ok(Response::new(pb::AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        r: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        let deadline = self.deadline(&r);
        let (enabled, auth_revision) = self
            .gate
            .read(deadline, |s| (s.enabled(), s.revision()))
            .await?;
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.hdr(),
            enabled,
            auth_revision,
        }))
    }

    async fn authenticate(
        &self,
        r: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let deadline = self.deadline(&r);
        let addr = r
            .remote_addr()
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        let pb::AuthenticateRequest { name, password } = r.into_inner();
        let (generation, key) = self
            .gate
            .check_password(addr, &name, password, deadline)
            .await?;
        let token = sign_token(
            &key,
            &name,
            generation,
            now_unix().saturating_add(self.gate.settings.token_ttl.as_secs()),
        )
        .ok_or_else(|| Status::internal("signing the token failed"))?;
        Ok(Response::new(pb::AuthenticateResponse {
            header: self.hdr(),
            token,
        }))
    }

    async fn user_add(
        &self,
        r: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        let (_, deadline) = self.manage(&r)?;
        let req = r.into_inner();
        let name = name_of(&req.name, AuthError::UserEmpty)?;
        let no_password = req.options.is_some_and(|o| o.no_password);
        let password_hash = self
            .gate
            .password_hash(&req.password, &req.hashed_password, no_password, deadline)
            .await?;
        let header = self
            .gate
            .change(
                AuthCommand::UserAdd {
                    name,
                    password_hash,
                },
                deadline,
            )
            .await?;
        Ok(Response::new(pb::AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        r: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let caller = self.gate.caller(&r)?;
        let deadline = self.deadline(&r);
        let name = r.into_inner().name;
        // A user may read itself; anyone else needs root.
        if caller.user() != Some(name.as_str()) {
            self.gate.check_admin(&caller)?;
        }
        let roles = self
            .gate
            .read(deadline, |s| {
                s.user(&name).map(|u| u.roles.iter().cloned().collect())
            })
            .await?
            .ok_or_else(|| auth_status(AuthError::UserNotFound))?;
        Ok(Response::new(pb::AuthUserGetResponse {
            header: self.hdr(),
            roles,
        }))
    }

    async fn user_list(
        &self,
        r: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        let (_, deadline) = self.manage(&r)?;
        let users = self.gate.read(deadline, AuthStore::user_names).await?;
        Ok(Response::new(pb::AuthUserListResponse {
            header: self.hdr(),
            users,
        }))
    }

    async fn user_delete(
        &self,
        r: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let (_, deadline) = self.manage(&r)?;
        let name = name_of(&r.into_inner().name, AuthError::UserEmpty)?;
        let header = self
            .gate
            .change(AuthCommand::UserDelete { name }, deadline)
            .await?;
        Ok(Response::new(pb::AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        r: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        let (_, deadline) = self.manage(&r)?;
        let req = r.into_inner();
        let name = name_of(&req.name, AuthError::UserEmpty)?;
        let password_hash = self
            .gate
            .password_hash(&req.password, &req.hashed_password, false, deadline)
            .await?;
        let header = self
            .gate
            .change(
                AuthCommand::UserChangePassword {
                    name,
                    password_hash,
                },
                deadline,
            )
            .await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        r: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let (_, deadline) = self.manage(&r)?;
        let req = r.into_inner();
        let user = name_of(&req.user, AuthError::UserEmpty)?;
        let role = name_of(&req.role, AuthError::RoleEmpty)?;
        let header = self
            .gate
            .change(AuthCommand::UserGrantRole { user, role }, deadline)
            .await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        r: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let (_, deadline) = self.manage(&r)?;
        let req = r.into_inner();
        let name = name_of(&req.name, AuthError::UserEmpty)?;
        let role = name_of(&req.role, AuthError::RoleEmpty)?;
        let header = self
            .gate
            .change(AuthCommand::UserRevokeRole { name, role }, deadline)
            .await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        r: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let (_, deadline) = self.manage(&r)?;
        let name = name_of(&r.into_inner().name, AuthError::RoleEmpty)?;
        let header = self
            .gate
            .change(AuthCommand::RoleAdd { name }, deadline)
            .await?;
        Ok(Response::new(pb::AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        r: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let caller = self.gate.caller(&r)?;
        let deadline = self.deadline(&r);
        let role = r.into_inner().role;
        // A user may read the roles it has; anything else needs root.
        let has = self.gate.store(|s| {
            caller
                .user()
                .and_then(|u| s.user(u))
                .is_some_and(|u| u.roles.contains(&role))
        })?;
        if !has {
            self.gate.check_admin(&caller)?;
        }
        let perm = self
            .gate
            .read(deadline, |s| s.role(&role).map(|r| r.permissions()))
            .await?
            .ok_or_else(|| auth_status(AuthError::RoleNotFound))?
            .into_iter()
            .map(|p| authpb::Permission {
                perm_type: p.kind.as_i32(),
                key: p.key,
                range_end: p.range_end,
            })
            .collect();
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: self.hdr(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        r: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        let (_, deadline) = self.manage(&r)?;
        let roles = self.gate.read(deadline, AuthStore::role_names).await?;
        Ok(Response::new(pb::AuthRoleListResponse {
            header: self.hdr(),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        r: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let (_, deadline) = self.manage(&r)?;
        let name = name_of(&r.into_inner().role, AuthError::RoleEmpty)?;
        let header = self
            .gate
            .change(AuthCommand::RoleDelete { name }, deadline)
            .await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        r: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let (_, deadline) = self.manage(&r)?;
        let req = r.into_inner();
        let name = name_of(&req.name, AuthError::RoleEmpty)?;
        let p = req
            .perm
            .ok_or_else(|| auth_status(AuthError::PermissionNotGiven))?;
        let kind = PermKind::from_i32(p.perm_type).ok_or_else(|| {
            Status::invalid_argument(format!("warden: unknown permission type {}", p.perm_type))
        })?;
        let perm = Permission {
            kind,
            key: p.key,
            range_end: p.range_end,
        };
        let header = self
            .gate
            .change(AuthCommand::RoleGrantPermission { name, perm }, deadline)
            .await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse {
            header,
        }))
    }

    async fn role_revoke_permission(
        &self,
        r: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let (_, deadline) = self.manage(&r)?;
        let req = r.into_inner();
        let role = name_of(&req.role, AuthError::RoleEmpty)?;
        let header = self
            .gate
            .change(
                AuthCommand::RoleRevokePermission {
                    role,
                    key: req.key,
                    range_end: req.range_end,
                },
                deadline,
            )
            .await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse {
            header,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_core::state::auth::ROOT;

    fn store() -> AuthStore {
        let mut s = AuthStore::default();
        for c in [
            AuthCommand::UserAdd {
                name: ROOT.into(),
                password_hash: None,
            },
            AuthCommand::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
            AuthCommand::Enable {
                token_key: vec![9; 32],
            },
        ] {
            s.apply(&c).unwrap();
        }
        s
    }

    #[test]
    fn tokens_verify_until_expiry_password_change_or_forgery() {
        let mut s = store();
        let g = s.user(ROOT).unwrap().generation;
        let t = sign_token(s.token_key(), ROOT, g, 1000).unwrap();
        assert_eq!(verify_token(&s, &t, 999), Ok(ROOT.to_owned()));
        assert_eq!(verify_token(&s, &t, 1000), Err(AuthError::InvalidAuthToken));
        // Another key, a changed field, garbage.
        let other = sign_token(&[1; 32], ROOT, g, 1000).unwrap();
        assert_eq!(
            verify_token(&s, &other, 1),
            Err(AuthError::InvalidAuthToken)
        );
        let longer = t.replacen(".1000.", ".2000.", 1);
        assert_eq!(
            verify_token(&s, &longer, 1),
            Err(AuthError::InvalidAuthToken)
        );
        for junk in ["", "a.b.c.d", "....", &"x".repeat(5000), "cm9vdA.1.1000"] {
            assert_eq!(verify_token(&s, junk, 1), Err(AuthError::InvalidAuthToken));
        }
        s.apply(&AuthCommand::UserChangePassword {
            name: ROOT.into(),
            password_hash: None,
        })
        .unwrap();
        assert_eq!(verify_token(&s, &t, 1), Err(AuthError::InvalidAuthToken));
    }

    #[test]
    fn only_a_wrong_password_keeps_its_charge() {
        let m = Mutex::new(Failures::default());
        let now = Instant::now();
        let a = IpAddr::from([10, 0, 0, 2]);
        // Attempts that end any other way (success, timeout, a caller that
        // hung up: the guard dropped) leave nothing behind, however many.
        for _ in 0..3 * MAX_FAILURES {
            let c = Charge::take(&m, a, now);
            assert!(c.is_ok());
        }
        // Attempts in flight count against the address...
        let held: Vec<_> = (0..MAX_FAILURES)
            .map(|_| Charge::take(&m, a, now))
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        assert_eq!(held.len(), MAX_FAILURES as usize);
        let braked = Charge::take(&m, a, now).err().map(|s| s.code());
        assert_eq!(braked, Some(tonic::Code::ResourceExhausted));
        drop(held);
        // ...and kept wrong passwords brake it.
        for _ in 0..MAX_FAILURES {
            if let Ok(mut c) = Charge::take(&m, a, now) {
                c.keep();
            }
        }
        assert!(Charge::take(&m, a, now).is_err());
    }

    #[test]
    fn attempts_are_charged_before_checking_and_only_their_own_success_refunds() {
        let mut f = Failures::default();
        let now = Instant::now();
        let a = IpAddr::from([10, 0, 0, 1]);
        // Concurrent attempts: each is charged as it starts, so the sixth
        // is braked even though none has finished.
        for _ in 0..MAX_FAILURES {
            assert!(f.charge(a, now).is_ok());
        }
        assert!(f.charge(a, now).is_err());
        // One success takes back one charge, not the other guesses.
        f.refund(a);
        assert!(f.charge(a, now).is_ok());
        assert!(f.charge(a, now).is_err());
        // IPv6: one /64 is one address.
        let v6 = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        for i in 0..MAX_FAILURES as u16 {
            assert!(f.charge(v6(i), now).is_ok());
        }
        assert!(f.charge(v6(999), now).is_err());
        assert!(f
            .charge(IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]), now)
            .is_ok());
    }

    #[test]
    fn failures_brake_one_address_and_stay_bounded() {
        let mut f = Failures::default();
        let now = Instant::now();
        let a = IpAddr::from([10, 0, 0, 1]);
        for _ in 0..MAX_FAILURES {
            assert!(f.allowed(a, now).is_ok());
            f.failed(a, now);
        }
        assert!(f.allowed(a, now).is_err());
        assert!(f.allowed(IpAddr::from([10, 0, 0, 2]), now).is_ok());
        assert!(f.allowed(a, now + FAILURE_WINDOW).is_ok());
        for i in 0..(MAX_TRACKED_ADDRS as u32 + 100) {
            f.failed(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(f.by_addr.len() <= MAX_TRACKED_ADDRS);
    }
}
