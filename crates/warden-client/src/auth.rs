//! Authentication: a user name and password exchanged for a token
//! (etcd's `Auth.Authenticate`), and the channel type every call goes
//! through, which attaches the current token as the `token` metadata entry
//! (the header etcd's servers read).
//!
//! Owns: the token cell shared by a client's channels and the rule for
//! when to authenticate again (no token yet, or the server answered
//! `etcdserver: invalid auth token`: expired, password changed, user
//! deleted). It never stores the password anywhere but the options.

use std::sync::{Arc, RwLock};

use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use warden_proto::etcdserverpb::auth_client::AuthClient;
use warden_proto::etcdserverpb::AuthenticateRequest;

/// The metadata key etcd's servers read the token from.
pub const TOKEN_METADATA: &str = "token";

/// etcd's message for a token that is not (or no longer) good.
pub const MSG_INVALID_TOKEN: &str = "etcdserver: invalid auth token";

/// A user name and password (etcdctl's `--user name:password`).
#[derive(Clone)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password (kept in memory only; never printed).
    pub password: String,
}

impl Credentials {
    /// Parses `name:password` (the password may contain `:`).
    pub fn parse(s: &str) -> Result<Credentials, String> {
        match s.split_once(':') {
            Some((user, password)) if !user.is_empty() => Ok(Credentials {
                user: user.to_owned(),
                password: password.to_owned(),
            }),
            // Not echoed: a mistyped value may be the password alone.
            _ => Err(
                "expected user:password (a non-empty user name, a colon, the password)".to_owned(),
            ),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// The token a client's channels attach, shared by all of them.
#[derive(Clone, Default)]
pub struct TokenCell(Arc<RwLock<Option<MetadataValue<Ascii>>>>);

impl TokenCell {
    /// Whether a token is held.
    pub fn is_set(&self) -> bool {
        self.0.read().map(|t| t.is_some()).unwrap_or(false)
    }

    /// Holds `token` from now on. A token that cannot be a header value
    /// (the server sends ASCII) is an error.
    pub fn set(&self, token: &str) -> Result<(), String> {
        let value: MetadataValue<Ascii> = token
            .parse()
            .map_err(|_| "the server's auth token is not ASCII".to_owned())?;
        if let Ok(mut t) = self.0.write() {
            *t = Some(value);
        }
        Ok(())
    }

    /// Drops the token (it was refused; the next call authenticates).
    pub fn clear(&self) {
        if let Ok(mut t) = self.0.write() {
            *t = None;
        }
    }
}

impl std::fmt::Debug for TokenCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TokenCell({})",
            if self.is_set() { "set" } else { "empty" }
        )
    }
}

/// Attaches the cell's token, when there is one, to every request, and
/// the extra metadata entries when given (an exactly-once write's tag).
#[derive(Clone, Debug, Default)]
pub struct AttachToken(pub TokenCell, pub Option<Arc<MetadataMap>>);

impl Interceptor for AttachToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Ok(t) = (self.0).0.read() {
            if let Some(v) = t.as_ref() {
                req.metadata_mut().insert(TOKEN_METADATA, v.clone());
            }
        }
        if let Some(extra) = &self.1 {
            for kv in extra.iter() {
                if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
                    req.metadata_mut().insert(k.clone(), v.clone());
                }
            }
        }
        Ok(req)
    }
}

/// The channel type of a [`super::Client`]: a tonic channel that attaches
/// the client's token. Generated gRPC clients take it like a `Channel`
/// (`KvClient::new(ch)`).
pub type AuthChannel = InterceptedService<Channel, AttachToken>;

/// Wraps `ch` so that its requests carry the token in `cell`.
pub fn with_token(ch: Channel, cell: TokenCell) -> AuthChannel {
    InterceptedService::new(ch, AttachToken(cell, None))
}

/// Wraps `ch` so that its requests carry the token in `cell` and `extra`.
pub fn with_token_and(ch: Channel, cell: TokenCell, extra: Arc<MetadataMap>) -> AuthChannel {
    InterceptedService::new(ch, AttachToken(cell, Some(extra)))
}

/// Whether `status` says the token was refused (authenticate again and
/// retry: the request was checked before anything was proposed).
pub fn token_refused(status: &Status) -> bool {
    status.code() == Code::Unauthenticated && status.message() == MSG_INVALID_TOKEN
}

/// Exchanges `creds` for a token at `ch` and returns it.
pub async fn authenticate(
    ch: Channel,
    creds: &Credentials,
    timeout: std::time::Duration,
) -> Result<String, Status> {
    let mut req = Request::new(AuthenticateRequest {
        name: creds.user.clone(),
        password: creds.password.clone(),
    });
    req.set_timeout(timeout);
    let resp = AuthClient::new(ch).authenticate(req).await?;
    Ok(resp.into_inner().token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_parse_and_hide_the_password() {
        let c = Credentials::parse("alice:pa:ss").unwrap();
        assert_eq!(c.user, "alice");
        assert_eq!(c.password, "pa:ss");
        assert!(!format!("{c:?}").contains("pa:ss"));
        assert!(Credentials::parse("alice").is_err());
        assert!(Credentials::parse(":pw").is_err());
        let err = Credentials::parse("secretvalue").err().unwrap();
        assert!(
            !err.contains("secretvalue"),
            "never echoes what may be a password: {err}"
        );
    }

    #[test]
    fn the_cell_attaches_its_token_until_cleared() {
        let cell = TokenCell::default();
        let mut i = AttachToken(cell.clone(), None);
        let r = i.call(Request::new(())).unwrap();
        assert!(r.metadata().get(TOKEN_METADATA).is_none());
        cell.set("abc.1.2.def").unwrap();
        let r = i.call(Request::new(())).unwrap();
        assert_eq!(r.metadata().get(TOKEN_METADATA).unwrap(), "abc.1.2.def");
        assert!(cell.set("bad\ntoken").is_err());
        cell.clear();
        assert!(!cell.is_set());
        let r = i.call(Request::new(())).unwrap();
        assert!(r.metadata().get(TOKEN_METADATA).is_none());
    }

    #[test]
    fn only_an_invalid_token_answer_means_authenticate_again() {
        assert!(token_refused(&Status::unauthenticated(MSG_INVALID_TOKEN)));
        assert!(!token_refused(&Status::permission_denied(
            "etcdserver: permission denied"
        )));
        assert!(!token_refused(&Status::invalid_argument(
            "etcdserver: user name is empty"
        )));
    }
}
