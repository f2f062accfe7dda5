//! etcd `Maintenance` service: Status, Alarm, HashKV (to compare replicas),
//! Defragment, MoveLeader, Snapshot. Downgrade is not offered.
//!
//! Alarm: ACTIVATE and DEACTIVATE go through the log (`Request::Alarm`, as
//! etcd's `AlarmRequest` goes through Raft), so every member holds the same
//! table; GET is a linearizable read of it. `member_id` 0 means every member
//! (GET, DEACTIVATE), alarm type NONE every type.
//!
//! Defragment has nothing to do and succeeds (etcd clients call it to
//! recover from NOSPACE): compaction already frees the memory of dropped
//! versions, and redb reuses the log file's free pages itself.
//!
//! Snapshot streams a backup encoded as the client reads it, from a
//! consistent copy of the state, so a stream holds a few chunks rather than
//! the whole database; at most [`MAX_SNAPSHOT_STREAMS`] run at once.
//!
//! Status reports the state size (`StateMachine::size`, warden's analogue
//! of etcd's backend size, the figure the quota is checked against) as both
//! `db_size` and `db_size_in_use`, and lists active alarms in `errors`
//! (before unreachable peers), as etcd does.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use super::auth::Gate;
use super::error::{node_status, state_status};
use super::{header, ETCD_API_VERSION};
use crate::node::network::SNAPSHOT_CHUNK;
use crate::node::peer_service::grpc_timeout;
use crate::node::types::Request as NodeRequest;
use crate::node::{Consistency, Node};
use warden_core::state::alarm::{AlarmAction, AlarmType};
use warden_core::state::{CommandResult, StateError};
use warden_proto::etcdserverpb as pb;

/// Backups (`Maintenance.Snapshot`) one member streams at once; a further
/// caller gets `ResourceExhausted`. etcd has no such limit, but each stream
/// costs the member a copy-on-write view of the state (pages that later
/// writes replace stay alive until it ends) and a core to encode it twice,
/// for as long as its client takes to read it: a few slow or stuck backup
/// clients must not be able to exhaust the member's memory or CPU.
pub const MAX_SNAPSHOT_STREAMS: usize = 2;

/// Chunks of `SNAPSHOT_CHUNK` bytes a backup stream encodes ahead of its
/// client. With the one being filled and the one being sent, a stream
/// holds about `(SNAPSHOT_STREAM_DEPTH + 2) x SNAPSHOT_CHUNK` bytes, however
/// large the state.
pub const SNAPSHOT_STREAM_DEPTH: usize = 2;

pub struct MaintenanceService {
    pub node: Arc<Node>,
    gate: Arc<Gate>,
    /// Permits for backup streams ([`MAX_SNAPSHOT_STREAMS`]).
    snapshot_streams: Arc<Semaphore>,
}

impl MaintenanceService {
    pub fn new(node: Arc<Node>, gate: Arc<Gate>) -> Self {
        Self {
            node,
            gate,
            snapshot_streams: Arc::new(Semaphore::new(MAX_SNAPSHOT_STREAMS)),
        }
    }
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        r: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        let req = r.get_ref();
        // etcd: listing alarms needs a user, changing them root.
        if req.action == pb::alarm_request::AlarmAction::Get as i32 {
            let caller = self.gate.caller(&r)?;
            self.gate.check_authenticated(&caller)?;
        } else {
            self.gate.admin(&r)?;
        }
        let alarm = AlarmType::from_i32(req.alarm).ok_or_else(|| {
            Status::invalid_argument(format!("warden: unknown alarm type {}", req.alarm))
        })?;
        let action = match pb::alarm_request::AlarmAction::try_from(req.action) {
            Ok(pb::alarm_request::AlarmAction::Get) => AlarmAction::Get,
            Ok(pb::alarm_request::AlarmAction::Activate) => AlarmAction::Activate,
            Ok(pb::alarm_request::AlarmAction::Deactivate) => AlarmAction::Deactivate,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "warden: unknown alarm action {}",
                    req.action
                )))
            }
        };
        let member_id = req.member_id;
        let deadline = self.node.deadline(grpc_timeout(&r));
        let (rev, alarms) = if action == AlarmAction::Get {
            self.node
                .read(Consistency::Linearizable, deadline, |d| {
                    (d.kv.revision(), d.alarms.get(member_id, alarm))
                })
                .await
                .map_err(node_status)?
        } else {
            let resp = self
                .node
                .write(
                    NodeRequest::Alarm {
                        action,
                        member_id,
                        alarm,
                    },
                    deadline,
                )
                .await
                .map_err(node_status)?;
            match resp.result {
                Ok(Some(CommandResult::Alarm(a))) => (resp.revision, a),
                Ok(_) => return Err(super::unexpected()),
                Err(e) => return Err(state_status(e)),
            }
        };
        Ok(Response::new(pb::AlarmResponse {
            header: Some(header(&self.node, rev)),
            alarms: alarms
                .into_iter()
                .map(|a| pb::AlarmMember {
                    member_id: a.member_id,
                    alarm: a.alarm.as_i32(),
                })
                .collect(),
        }))
    }

    async fn status(
        &self,
        _r: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let st = self.node.status();
        let (db_size, alarms) = self
            .node
            .with_state(|d| (d.kv.size(), d.alarms.get(0, AlarmType::None)))
            .map_err(node_status)?;
        // Active alarms first, as etcd lists them in `errors`.
        let mut errors: Vec<String> = alarms
            .iter()
            .map(|a| format!("memberID:{} alarm:{}", a.member_id, alarm_name(a.alarm)))
            .collect();
        errors.extend(link_errors(&self.node));
        let db_size = i64::try_from(db_size).unwrap_or(i64::MAX);
        Ok(Response::new(pb::StatusResponse {
            header: Some(header(&self.node, st.revision)),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: st.leader.unwrap_or(0),
            raft_index: st.last_log_index,
            raft_term: st.term,
            raft_applied_index: st.applied,
            errors,
            db_size_in_use: db_size,
            is_learner: st.is_learner(),
        }))
    }

    async fn defragment(
        &self,
        r: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        self.gate.admin(&r).map_err(raw_auth_error)?;
        // No header, as etcd answers (clients check for that).
        Ok(Response::new(pb::DefragmentResponse { header: None }))
    }

    async fn hash(
        &self,
        r: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        self.gate.admin(&r).map_err(raw_auth_error)?;
        // etcd hashes its whole backend file; what clients rely on is a
        // number that members holding the same data agree on: the hash of
        // every revision kept, up to the current one.
        let (rev, hash, _) = self.hash_at(0).await?;
        Ok(Response::new(pb::HashResponse {
            header: Some(header(&self.node, rev)),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        r: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        self.gate.admin(&r).map_err(raw_auth_error)?;
        let (rev, hash, compact_revision) = self.hash_at(r.get_ref().revision).await?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(header(&self.node, rev)),
            hash,
            compact_revision,
        }))
    }

    type SnapshotStream =
        Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send + 'static>>;

    async fn snapshot(
        &self,
        r: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.gate.admin(&r).map_err(raw_auth_error)?;
        let permit = self
            .snapshot_streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "warden: this member is already streaming {MAX_SNAPSHOT_STREAMS} backups \
                     (Maintenance.Snapshot), its limit; retry when one has finished, or take \
                     the backup from another member"
                ))
            })?;
        // A consistent copy of this member's applied state, taken under the
        // read lock, encoded outside it as the client takes the chunks: at
        // most SNAPSHOT_STREAM_DEPTH chunks wait for a slow client.
        let (rev, total, chunks) = self
            .node
            .stream_state(SNAPSHOT_CHUNK, SNAPSHOT_STREAM_DEPTH)
            .await
            .map_err(node_status)?;
        let header = header(&self.node, rev);
        // The permit lives as long as the stream: until the last chunk is
        // sent, an error ends it, or the client goes away.
        let stream = futures::stream::unfold(
            (chunks, total, Some(permit)),
            move |(mut chunks, remaining, permit)| async move {
                let permit = permit?;
                let item = match chunks.recv().await {
                    Some(Ok(blob)) => {
                        let remaining = remaining.saturating_sub(blob.len() as u64);
                        let resp = pb::SnapshotResponse {
                            header: Some(header),
                            remaining_bytes: remaining,
                            blob,
                        };
                        return Some((Ok(resp), (chunks, remaining, Some(permit))));
                    }
                    Some(Err(e)) => Status::internal(format!(
                        "warden: backup at revision {rev} failed with {remaining} bytes left: {e}"
                    )),
                    None if remaining == 0 => return None,
                    None => Status::internal(format!(
                        "warden: backup at revision {rev} ended {remaining} bytes short"
                    )),
                };
                Some((Err(item), (chunks, remaining, None)))
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn move_leader(
        &self,
        r: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        self.gate.admin(&r)?;
        let target = r.get_ref().target_id;
        self.node
            .transfer_leader(target)
            .await
            .map_err(node_status)?;
        // No header, as etcd answers.
        Ok(Response::new(pb::MoveLeaderResponse { header: None }))
    }

    async fn downgrade(
        &self,
        r: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        self.gate.admin(&r)?;
        Err(Status::unimplemented("downgrade is not supported"))
    }
}

/// etcd's name of an alarm type (`AlarmType` in `rpc.proto`).
fn alarm_name(a: AlarmType) -> &'static str {
    match a {
        AlarmType::None => "NONE",
        AlarmType::NoSpace => "NOSPACE",
        AlarmType::Corrupt => "CORRUPT",
    }
}

/// How long a follower reports a failed call to its leader when nothing
/// has called the leader since.
const FOLLOWER_LINK_STALE: std::time::Duration = std::time::Duration::from_secs(5);

/// Peers this member cannot currently reach, as `Status.errors` lines (etcd
/// reports alarms there; `warden status` and `etcdctl endpoint status` show
/// them). The leader reports every link; a follower only its link to the
/// leader, and only while its last failure is recent ([`FOLLOWER_LINK_STALE`]).
/// A follower does not talk to other followers, and calls its leader only
/// to forward work, so its record of a failed dial (a vote asked at
/// start-up, before that peer listened) would never be refreshed and would
/// read as a fault that is not there. (The leader's links carry heartbeats:
/// their state is never older than a heartbeat.)
fn link_errors(node: &Node) -> Vec<String> {
    use crate::node::network::LinkState;
    let leader = node.leader();
    let leading = leader == Some(node.id());
    node.peer_links()
        .into_iter()
        .filter(|(_, l)| l.state == LinkState::Disconnected)
        .filter(|(id, l)| {
            leading
                || (Some(*id) == leader
                    && l.last_failed
                        .is_some_and(|t| t.elapsed() < FOLLOWER_LINK_STALE))
        })
        .map(|(id, l)| {
            let since = l.last_ok.map_or("never reached".to_string(), |t| {
                format!("last reached {:.1}s ago", t.elapsed().as_secs_f64())
            });
            format!(
                "peer {id:x} at {}: disconnected ({since}): {}",
                l.addr,
                l.last_error.unwrap_or_default()
            )
        })
        .collect()
}

/// etcd checks Defragment, Hash, HashKV and Snapshot in a wrapper that
/// returns the auth store's own error unconverted, so etcdctl prints
/// `rpc error: code = Unknown desc = auth: permission denied` for them
/// (not `etcdserver: permission denied`). Same code and text here.
fn raw_auth_error(s: Status) -> Status {
    match s.code() {
        tonic::Code::PermissionDenied
        | tonic::Code::Unauthenticated
        | tonic::Code::InvalidArgument => {
            let msg = s.message();
            let rest = msg.strip_prefix("etcdserver: ").unwrap_or(msg);
            Status::unknown(format!("auth: {rest}"))
        }
        _ => s,
    }
}

impl MaintenanceService {
    /// (current revision, hash of the store at `asked` (0: current),
    /// compaction revision).
    async fn hash_at(&self, asked: i64) -> Result<(i64, u32, i64), Status> {
        // Hashes every key: on a copy, off the lock and the async workers.
        let (rev, hash, compact_revision) = self
            .node
            .scan_applied(move |m| {
                let rev = m.current_revision();
                let at = if asked == 0 { rev } else { asked };
                if at > rev {
                    return Err(StateError::FutureRevision);
                }
                if at < m.compact_revision() {
                    return Err(StateError::Compacted);
                }
                Ok((rev, m.hash_kv(at)?, m.compact_revision()))
            })
            .await
            .map_err(node_status)?
            .map_err(state_status)?;
        Ok((rev, hash, compact_revision))
    }
}
