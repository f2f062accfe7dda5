//! `--auth`: turns etcd auth on before the workloads start, the way an
//! operator would with etcdctl (root user and role, an application user
//! with a key-range role, `auth enable`), and authenticates the harness's
//! own channels.
//!
//! The application role may read and write every key (`[\0, \0)`, etcd's
//! "from the empty key on"), so every workload request passes; the point is
//! that each one carries a token through every path (KV, txn, leases,
//! watches, both lock APIs) and is checked, at the gateway and again when
//! applied, while members are killed, paused and partitioned.

use std::time::Duration;

use anyhow::Context as _;
use tonic::Code;
use warden_client::{Client, ClientError, ClientOptions, Credentials, OpKind};
use warden_proto::authpb;
use warden_proto::etcdserverpb::{self as pb, auth_client::AuthClient};

use crate::workload::Topology;

/// The application user every workload client authenticates as.
pub const USER: &str = "chaos";
const ROOT_PASSWORD: &str = "chaos-root-pw";
const USER_PASSWORD: &str = "chaos-pw";

/// Sets auth up (the cluster must have a leader), authenticates the
/// topology's channels, and returns the credentials clients should use.
pub async fn enable(opts: &ClientOptions, topo: &Topology) -> anyhow::Result<Credentials> {
    let mut setup = opts.clone();
    setup.timeout = setup.timeout.max(Duration::from_secs(10));
    let client = Client::connect(&topo.client_addrs, setup).await?;
    let add_user = |name: &'static str, password: &'static str| pb::AuthUserAddRequest {
        name: name.to_owned(),
        password: password.to_owned(),
        options: None,
        hashed_password: String::new(),
    };
    step(&client, "user add root", |mut a| async move {
        a.user_add(add_user("root", ROOT_PASSWORD)).await.map(drop)
    })
    .await?;
    step(&client, "role add root", |mut a| async move {
        a.role_add(pb::AuthRoleAddRequest {
            name: "root".into(),
        })
        .await
        .map(drop)
    })
    .await?;
    step(&client, "user grant-role root root", |mut a| async move {
        a.user_grant_role(pb::AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        })
        .await
        .map(drop)
    })
    .await?;
    step(&client, "user add chaos", |mut a| async move {
        a.user_add(add_user(USER, USER_PASSWORD)).await.map(drop)
    })
    .await?;
    step(&client, "role add app", |mut a| async move {
        a.role_add(pb::AuthRoleAddRequest { name: "app".into() })
            .await
            .map(drop)
    })
    .await?;
    step(
        &client,
        "role grant-permission app readwrite --from-key ''",
        |mut a| async move {
            a.role_grant_permission(pb::AuthRoleGrantPermissionRequest {
                name: "app".into(),
                perm: Some(authpb::Permission {
                    perm_type: authpb::permission::Type::Readwrite as i32,
                    key: vec![0],
                    range_end: vec![0],
                }),
            })
            .await
            .map(drop)
        },
    )
    .await?;
    step(&client, "user grant-role chaos app", |mut a| async move {
        a.user_grant_role(pb::AuthUserGrantRoleRequest {
            user: USER.into(),
            role: "app".into(),
        })
        .await
        .map(drop)
    })
    .await?;
    step(&client, "auth enable", |mut a| async move {
        a.auth_enable(pb::AuthEnableRequest {}).await.map(drop)
    })
    .await?;

    // Auth is on: a read without a token is refused.
    let mut kv = pb::kv_client::KvClient::new(topo.raw.first().context("no members")?.clone());
    if kv
        .range(pb::RangeRequest {
            key: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .is_ok()
    {
        anyhow::bail!("auth enable returned, but a read without a token still succeeds");
    }

    let creds = Credentials {
        user: USER.to_owned(),
        password: USER_PASSWORD.to_owned(),
    };
    // The harness's own channels (register and watch workloads) carry
    // the application user's token too.
    let mut token = None;
    let mut errors = Vec::new();
    for (ch, addr) in topo.raw.iter().zip(&topo.client_addrs) {
        match warden_client::auth::authenticate(ch.clone(), &creds, Duration::from_secs(5)).await {
            Ok(t) => {
                token = Some(t);
                break;
            }
            Err(e) => errors.push(format!("{addr}: {}", e.message())),
        }
    }
    let token = token.with_context(|| {
        format!(
            "no member authenticated the chaos user: {}",
            errors.join("; ")
        )
    })?;
    topo.token
        .set(&token)
        .map_err(|e| anyhow::anyhow!("auth token: {e}"))?;
    Ok(creds)
}

/// Runs one management call with the client's retries; "already exists" or
/// "already enabled"-style answers mean an earlier attempt was applied.
async fn step<F, Fut>(client: &Client, what: &str, call: F) -> anyhow::Result<()>
where
    F: Fn(AuthClient<warden_client::AuthChannel>) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let r = client
        .request(OpKind::Write, |ch, _| {
            let fut = call(AuthClient::new(ch));
            async move { fut.await.map(tonic::Response::new) }
        })
        .await;
    match r {
        Ok(()) => Ok(()),
        Err(ClientError::Server { code, message, .. })
            if code == Code::FailedPrecondition && message.contains("already exists") =>
        {
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("{what}: {e}")),
    }
}
