//! The status page: `GET /ui` (one HTML file with its CSS and JS, embedded
//! in the binary; no build step, no CDN) polls `GET /ui/state`, this
//! member's view of the cluster as JSON:
//!
//! - this member: id, name, role, term, last log, commit and applied
//!   index, revision, leader;
//! - every member: role, URLs, this member's link to it, and, when this
//!   member leads, the log index it holds and how far it lags;
//! - native locks: holders (owner, mode, fencing token, lease), waiters,
//!   and how long the oldest has waited (since this member saw it queue);
//! - lease count, and the recent leader changes this member saw.
//!
//! With auth on, `/ui/state` needs root's token in `Authorization` (the
//! page asks for a password and gets one from `/v3/auth/authenticate`);
//! the page itself holds no data.
//!
//! Owns: the page, the JSON, the leader-change history and first-seen
//! times of waiters. Never: anything that changes state.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::auth::Gate;
use super::gateway::{error, grpc_request};
use crate::node::Node;

/// The page.
const PAGE: &str = include_str!("ui.html");

/// Leader changes remembered.
const HISTORY: usize = 20;

/// Locks listed (those with the most waiters first); the count says how
/// many there are in all.
const MAX_LOCKS: usize = 100;

/// Waiters whose first-seen time is kept (beyond it, new ones show no
/// wait time rather than growing the map).
const MAX_TRACKED_WAITERS: usize = 10_000;

/// How often the leader is sampled for the history.
const SAMPLE: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct Ui {
    node: Arc<Node>,
    gate: Arc<Gate>,
    inner: Arc<Mutex<Seen>>,
}

#[derive(Default)]
struct Seen {
    /// (unix ms, term, new leader or none), oldest first.
    leaders: VecDeque<(u64, u64, Option<u64>)>,
    /// When this member's page first saw each waiter (lock, waiter id).
    waiters: HashMap<(String, u64), Instant>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The page's routes; starts the leader sampler (it ends with the node).
pub fn router(node: Arc<Node>, gate: Arc<Gate>) -> Router {
    let ui = Ui {
        node: node.clone(),
        gate,
        inner: Arc::new(Mutex::new(Seen::default())),
    };
    tokio::spawn(sample_leaders(Arc::downgrade(&node), ui.inner.clone()));
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui", get(page))
        .route("/ui/state", get(state))
        .with_state(ui)
}

async fn sample_leaders(node: Weak<Node>, seen: Arc<Mutex<Seen>>) {
    let mut last: Option<Option<u64>> = None;
    let mut tick = tokio::time::interval(SAMPLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        let now = node.leader();
        if last != Some(now) {
            last = Some(now);
            if let Ok(mut s) = seen.lock() {
                if s.leaders.len() >= HISTORY {
                    s.leaders.pop_front();
                }
                s.leaders.push_back((unix_ms(), node.term(), now));
            }
        }
    }
}

async fn page() -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

async fn state(State(ui): State<Ui>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let probe = grpc_request(parts, ());
    let auth_on = ui.gate.auth_enabled().unwrap_or(true);
    if auth_on {
        if let Err(s) = ui.gate.admin(&probe) {
            return error(&s);
        }
    }
    match snapshot(&ui) {
        Ok(v) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            v.to_string(),
        )
            .into_response(),
        Err(e) => error(&e),
    }
}

fn role_name(st: &crate::node::NodeStatus, id: u64) -> &'static str {
    if st.leader == Some(id) {
        "leader"
    } else if st.learners.contains(&id) {
        "learner"
    } else {
        "follower"
    }
}

/// This member's view, as the page shows it.
fn snapshot(ui: &Ui) -> Result<Value, tonic::Status> {
    let node = &ui.node;
    let st = node.status();
    let links = node.peer_links();
    let matched = node.matched();
    let members = super::cluster::members(node)?;
    let members: Vec<Value> = members
        .iter()
        .map(|m| {
            let link = if m.id == st.id {
                json!("self")
            } else {
                links
                    .get(&m.id)
                    .map_or(json!("unknown"), |l| json!(format!("{:?}", l.state)))
            };
            let held = matched.as_ref().and_then(|r| r.get(&m.id).copied());
            let held = if m.id == st.id && matched.is_some() {
                Some(st.last_log_index)
            } else {
                held
            };
            json!({
                "id": format!("{:x}", m.id),
                "name": m.name,
                "role": role_name(&st, m.id),
                "peer_urls": m.peer_urls,
                "client_urls": m.client_urls,
                "link": link,
                "matched": held,
                "lag": held.map(|h| st.last_log_index.saturating_sub(h)),
            })
        })
        .collect();

    let (locks, lock_count, leases) = node
        .with_state(|d| {
            let table = d.kv.locks();
            let mut all: Vec<_> = table.locks_with_prefix("").collect();
            let count = all.len();
            all.sort_by(|a, b| {
                b.waiters
                    .len()
                    .cmp(&a.waiters.len())
                    .then_with(|| a.name.cmp(&b.name))
            });
            all.truncate(MAX_LOCKS);
            (all, count, d.kv.leases().len())
        })
        .map_err(super::error::node_status)?;

    let now = Instant::now();
    let (history, locks) = {
        let mut seen = ui
            .inner
            .lock()
            .map_err(|_| tonic::Status::internal("status page state poisoned"))?;
        // Forget waiters no longer queued on the listed locks, then note
        // the new ones.
        let queued: std::collections::HashSet<(String, u64)> = locks
            .iter()
            .flat_map(|l| l.waiters.iter().map(|w| (l.name.clone(), w.waiter_id)))
            .collect();
        seen.waiters.retain(|k, _| queued.contains(k));
        for k in &queued {
            if seen.waiters.len() >= MAX_TRACKED_WAITERS {
                break;
            }
            seen.waiters.entry(k.clone()).or_insert(now);
        }
        let locks: Vec<Value> = locks
            .iter()
            .map(|l| {
                let longest = l
                    .waiters
                    .iter()
                    .filter_map(|w| seen.waiters.get(&(l.name.clone(), w.waiter_id)))
                    .map(|t| now.duration_since(*t).as_millis())
                    .max();
                json!({
                    "name": l.name,
                    "holders": l.holders.iter().map(|h| json!({
                        "owner": h.owner,
                        "mode": h.mode.as_str(),
                        "token": h.token,
                        "lease": format!("{:x}", h.lease),
                    })).collect::<Vec<_>>(),
                    "waiters": l.waiters.len(),
                    "longest_wait_ms": longest,
                })
            })
            .collect();
        let history: Vec<Value> = seen
            .leaders
            .iter()
            .rev()
            .map(|(at, term, leader)| {
                json!({
                    "at_unix_ms": at,
                    "term": term,
                    "leader": leader.map(|l| format!("{l:x}")),
                })
            })
            .collect();
        (history, locks)
    };

    Ok(json!({
        "member": {
            "id": format!("{:x}", st.id),
            "name": node.name(),
            "role": role_name(&st, st.id),
            "term": st.term,
            "last_log_index": st.last_log_index,
            "commit_index": st.committed,
            "applied_index": st.applied,
            "revision": st.revision,
        },
        "leader": st.leader.map(|l| format!("{l:x}")),
        "members": members,
        "locks": locks,
        "lock_count": lock_count,
        "lease_count": leases,
        "leader_changes": history,
    }))
}
