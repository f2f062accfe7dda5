//! Start-up of a member: opens its data directory (refusing one that belongs
//! to another member, or to a member the cluster removed), verifies the Raft
//! log, settles the member's identity (bootstrapping `initial_cluster`, or
//! joining a running cluster as a learner through `--join`), starts Raft and
//! the member's background tasks, and publishes its client address into the
//! replicated state.
//!
//! Must never: start Raft on a data directory whose identity does not match
//! the configured name, initialise a cluster a joining member was added to,
//! or give a rejoining member a new id when the cluster already knows it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::network::{self, Links, NetworkFactory};
use super::state_machine::SmStore;
use super::types::{self, Member, Request};
use super::{lessor, log_store, membership, Node, NodeConfig, NodeError};

/// Cluster id from the initial cluster definition: every member of a cluster
/// computes the same value.
pub fn cluster_id_for(initial: &BTreeMap<String, String>) -> u64 {
    let s: Vec<String> = initial.iter().map(|(n, a)| format!("{n}={a}")).collect();
    types::node_id_for(&s.join(","))
}

impl Node {
    /// Opens the member's data directory and starts Raft. The caller serves
    /// the peer service (`peer_service`) on the peer address.
    pub async fn start(cfg: NodeConfig) -> anyhow::Result<Arc<Node>> {
        use anyhow::Context;
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("create data dir {}", cfg.data_dir.display()))?;
        let stored_identity = membership::Identity::load(&cfg.data_dir)?;
        if let Some(membership::Identity {
            removed_at: Some(index),
            ..
        }) = &stored_identity
        {
            anyhow::bail!(
                "member {:?} was removed from the cluster (membership at log index {index}); \
                 to add this server again, empty {} and start it with --join",
                cfg.name,
                cfg.data_dir.display()
            );
        }
        let log_path = cfg.data_dir.join("raft.redb");
        let telemetry = Arc::new(super::telemetry::Telemetry::default());
        let mut db = warden_core::storage::log_db::LogDb::open(&log_path)?;
        let records = db.verify()?;
        tracing::info!(log = %log_path.display(), records, "raft log verified");
        db.observe_commits(telemetry.wal_observer());
        let sm = SmStore::open_with(&cfg.data_dir.join("snap"), telemetry.clone())?;
        sm.hub().set_limits(cfg.watch);

        let raft_config = openraft::Config {
            cluster_name: "warden".into(),
            election_timeout_min: cfg.election_timeout_min_ms,
            election_timeout_max: cfg.election_timeout_max_ms,
            heartbeat_interval: cfg.heartbeat_interval_ms,
            enable_pre_vote: Some(true),
            // `snapshot_policy::run` asks for snapshots, in proportion to
            // the state's size.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            // Entries kept behind a snapshot for slow followers: at most one
            // snapshot interval, so a short interval really bounds the log.
            max_in_snapshot_log_to_keep: cfg.snapshot_entries.min(1000),
            install_snapshot_timeout: 10_000,
            // A member that led before it stopped must win an election
            // again (a new term, a new blank entry) rather than resume
            // leading in its old term. Resumed, its read index would be its
            // old term's first entry or its committed log id as stored,
            // which lags (the committed log id rides with the next append,
            // see `log_store`): after every member crashed, it answered
            // linearizable reads from a state machine replayed only that
            // far, older than writes it had acknowledged (openraft's docs
            // of `enable_leader_restore` warn of exactly this).
            enable_leader_restore: Some(false),
            ..Default::default()
        }
        .validate()
        .context("raft configuration")?;

        let identity = match stored_identity {
            Some(i) if i.name != cfg.name => anyhow::bail!(
                "data dir {} belongs to member {:?}, not {:?}",
                cfg.data_dir.display(),
                i.name,
                cfg.name
            ),
            Some(i) => i,
            None => {
                let i = if cfg.join.is_empty() {
                    membership::Identity {
                        name: cfg.name.clone(),
                        id: types::node_id_for(&cfg.name),
                        cluster_id: cluster_id_for(&cfg.initial_cluster),
                        joined: false,
                        removed_at: None,
                        listed_at: None,
                        log_started: false,
                    }
                } else {
                    join_cluster(&cfg).await?
                };
                i.save(&cfg.data_dir)?;
                i
            }
        };
        let id = identity.id;
        let links = Arc::new(Links::new(
            cfg.peer_routes.clone(),
            cfg.peer_tls.as_ref().map(|t| t.as_client()),
            super::peer_auth::PeerIdentity {
                cluster_id: identity.cluster_id,
                member_id: id,
            },
            telemetry.clone(),
        ));
        let net = NetworkFactory {
            links: links.clone(),
        };
        let log_store = log_store::LogStore::new(Arc::new(db));
        let raft = openraft::Raft::new(id, Arc::new(raft_config), net, log_store, sm.clone())
            .await
            .context("start raft")?;

        let initialized = raft.is_initialized().await.context("raft stopped")?;
        let mut identity = identity;
        if !initialized && identity.log_started {
            anyhow::bail!(
                "the Raft log {} is empty, but {} records that this member's log held \
                 entries: the log was lost or replaced. Starting would bring the member back \
                 with no log and no memory of its votes, which can break the cluster's safety. \
                 Restore the data dir from a backup, or empty it and add the member again with \
                 --join",
                log_path.display(),
                cfg.data_dir.join("member.json").display()
            );
        }
        if initialized && !identity.log_started {
            identity.log_started = true;
            identity.save(&cfg.data_dir)?;
        }
        if !identity.joined && !initialized {
            let members: BTreeMap<u64, Member> = cfg
                .initial_cluster
                .iter()
                .map(|(name, addr)| {
                    (
                        types::node_id_for(name),
                        Member {
                            name: name.clone(),
                            peer_addr: addr.clone(),
                        },
                    )
                })
                .collect();
            tracing::info!(?members, "bootstrapping new cluster");
            if let Err(e) = raft.initialize(members).await {
                // Another member's identical initialisation may have reached
                // us first; that is fine.
                tracing::info!("initialize: {e}");
            }
        }

        let (read_rounds, read_waiters) = tokio::sync::mpsc::unbounded_channel();
        let node = Arc::new(Node {
            id,
            name: cfg.name.clone(),
            cluster_id: identity.cluster_id,
            client_addr: cfg.client_addr.clone(),
            raft,
            sm,
            links,
            config: cfg,
            forward_clients: Mutex::new(BTreeMap::new()),
            lessor: lessor::Lessor::default(),
            joined: identity.joined,
            removed: tokio::sync::watch::channel(None).0,
            telemetry,
            failover: super::failover::Failover::default(),
            read_rounds,
            forward_stream: Default::default(),
        });
        tokio::spawn(super::reads::read_index_rounds(
            Arc::downgrade(&node),
            read_waiters,
        ));
        tokio::spawn(super::snapshot_policy::run(Arc::downgrade(&node)));
        tokio::spawn(publish_client_addr(node.clone()));
        tokio::spawn(lessor::run(node.clone()));
        tokio::spawn(super::failover::run(node.clone()));
        if let Some(policy) = node.config.auto_compaction {
            tokio::spawn(super::auto_compact::run(node.clone(), policy));
        }
        if node.config.auto_promote {
            tokio::spawn(membership::promote_when_ready(node.clone()));
        }
        tokio::spawn(membership::watch_for_removal(node.clone(), identity));
        Ok(node)
    }
}

/// Adds this member to a running cluster as a learner (etcd `MemberAdd`
/// through any of `cfg.join`) and returns its identity. Asking again after
/// a crash finds the member already added and reuses its id.
async fn join_cluster(cfg: &NodeConfig) -> anyhow::Result<membership::Identity> {
    use warden_client::{Client, ClientOptions, OpKind};
    use warden_proto::etcdserverpb::{cluster_client::ClusterClient, MemberAddRequest};
    let opts = ClientOptions {
        tls: cfg.client_tls.as_ref().map(|t| t.as_client()),
        ..ClientOptions::default()
    };
    let client = Client::connect(&cfg.join, opts).await?;
    let peer_url = format!("{}://{}", cfg.peer_scheme(), cfg.peer_addr);
    // The cluster may be electing a leader: keep asking for a while.
    let give_up = Instant::now() + Duration::from_secs(30);
    let added = loop {
        let url = peer_url.clone();
        let r = client
            .request(OpKind::Write, move |ch, _| {
                let url = url.clone();
                async move {
                    ClusterClient::new(ch)
                        .member_add(MemberAddRequest {
                            peer_urls: vec![url],
                            is_learner: true,
                        })
                        .await
                }
            })
            .await;
        match r {
            Err(warden_client::ClientError::Unavailable { .. })
            | Err(warden_client::ClientError::DeadlineExceeded { .. })
                if Instant::now() < give_up =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => break other,
        }
    };
    let id = membership::id_for_peer(&cfg.peer_addr);
    let cluster_id = match added {
        Ok(r) => r.header.map_or(0, |h| h.cluster_id),
        // Refused as a duplicate (etcd's "Peer URLs already exists" and
        // "member ID already exist" are both FailedPrecondition): the
        // member list tells whether it is this member, added before a crash.
        Err(e) if e.code() == tonic::Code::FailedPrecondition => {
            let list = client.member_list(true).await?;
            let holder = list
                .members
                .iter()
                .find(|m| m.peer_urls.contains(&peer_url))
                .map(|m| m.id);
            match holder {
                Some(h) if h == id => list.header.map_or(0, |h| h.cluster_id),
                Some(_) => anyhow::bail!(
                    "cannot join: peer address {} is taken by another member",
                    cfg.peer_addr
                ),
                None => {
                    return Err(anyhow::anyhow!(e)
                        .context(format!("joining the cluster at {}", cfg.join.join(","))))
                }
            }
        }
        Err(e) => {
            return Err(anyhow::anyhow!(e)
                .context(format!("joining the cluster at {}", cfg.join.join(","))))
        }
    };
    // Every peer call carries the cluster id, and members refuse calls from
    // another cluster: a joining member must know it before its first call.
    if cluster_id == 0 {
        anyhow::bail!(
            "joining the cluster at {}: its answer carried no cluster id",
            cfg.join.join(",")
        );
    }
    tracing::info!(id = %format!("{id:x}"), cluster_id = %format!("{cluster_id:x}"), "joined the cluster as a learner");
    Ok(membership::Identity {
        name: cfg.name.clone(),
        id,
        cluster_id,
        joined: true,
        removed_at: None,
        listed_at: None,
        log_started: false,
    })
}

/// Publishes this member's client address into the replicated state until it
/// is there (as etcd publishes member attributes after start).
async fn publish_client_addr(node: Arc<Node>) {
    let mut backoff = network::schedule(warden_client::backoff::Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(2),
    });
    loop {
        let present = node
            .sm
            .read()
            .map(|d| {
                d.client_addrs.get(&node.id) == Some(&node.client_addr)
                    && d.names.get(&node.id) == Some(&node.name)
            })
            .unwrap_or(false);
        if present {
            return;
        }
        let req = Request::Publish {
            node_id: node.id,
            name: node.name.clone(),
            client_addr: node.client_addr.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        match node.write(req, deadline).await {
            Ok(_) | Err(NodeError::Stopped) => return,
            Err(e) => tracing::debug!("publishing client address: {e}"),
        }
        if let Some(d) = backoff.next() {
            tokio::time::sleep(d).await;
        }
    }
}
