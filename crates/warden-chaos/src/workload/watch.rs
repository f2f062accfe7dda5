//! The watch workload: watchers follow every key under the workloads'
//! prefix from revision 1. When a stream fails, ends, or stays silent for
//! too long (the member is paused or cut off — members send progress
//! notifications every second, so a healthy stream is never silent), the
//! watcher moves to the next member and resumes after the last revision it
//! saw. At the end the harness replays the prefix from revision 1 in one
//! session on a healthy member: the history every watcher is compared with.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{keys, Ctx};
use crate::history::{Call, EventKind, Outcome, Ret, WatchEvent, CANONICAL_WATCHER};
use warden_client::keys::prefix_range;
use warden_proto::etcdserverpb::{
    watch_client::WatchClient, watch_request::RequestUnion, WatchCreateRequest, WatchRequest,
};
use warden_proto::mvccpb::event::EventType;

/// A stream silent this long is given up.
const IDLE: Duration = Duration::from_secs(4);

/// The result of one session.
struct Session {
    events: Vec<WatchEvent>,
    next_rev: i64,
    finished: bool,
    error: Option<String>,
}

/// One watch stream on member `member` from `from_rev`, until it fails or
/// `finished(next_rev)` says the watcher has seen enough.
async fn session(
    ctx: &Ctx,
    watcher: u32,
    session: u32,
    member: usize,
    from_rev: i64,
    finished: &(dyn Fn(i64) -> bool + Sync),
) -> Session {
    let mut s = Session {
        events: Vec::new(),
        next_rev: from_rev,
        finished: false,
        error: None,
    };
    let Some(ch) = ctx.topo.channels.get(member).cloned() else {
        s.error = Some("no such member".into());
        return s;
    };
    let name = ctx.topo.names.get(member).cloned().unwrap_or_default();
    let (key, range_end) = prefix_range(keys::PREFIX.as_bytes());
    let (tx, rx) = mpsc::channel(4);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key,
            range_end,
            start_revision: from_rev,
            progress_notify: true,
            ..Default::default()
        })),
    };
    if tx.send(create).await.is_err() {
        s.error = Some("request stream closed".into());
        return s;
    }
    let opened =
        tokio::time::timeout(IDLE, WatchClient::new(ch).watch(ReceiverStream::new(rx))).await;
    let mut stream = match opened {
        Err(_) => {
            s.error = Some("timed out opening the stream".into());
            return s;
        }
        Ok(Err(e)) => {
            s.error = Some(e.to_string());
            return s;
        }
        Ok(Ok(r)) => r.into_inner(),
    };
    loop {
        if finished(s.next_rev) {
            s.finished = true;
            break;
        }
        let msg = tokio::time::timeout(IDLE, stream.message()).await;
        let resp = match msg {
            Err(_) => {
                s.error = Some(format!("silent for {IDLE:?}"));
                break;
            }
            Ok(Err(e)) => {
                s.error = Some(e.to_string());
                break;
            }
            Ok(Ok(None)) => {
                s.error = Some("stream ended".into());
                break;
            }
            Ok(Ok(Some(r))) => r,
        };
        if resp.compact_revision != 0 {
            s.error = Some(format!("compacted at {}", resp.compact_revision));
            break;
        }
        if resp.canceled {
            s.error = Some(format!("cancelled: {}", resp.cancel_reason));
            break;
        }
        let now = ctx.rec.now();
        for ev in resp.events {
            let kv = ev.kv.unwrap_or_default();
            let kind = if ev.r#type == EventType::Delete as i32 {
                EventKind::Delete
            } else {
                EventKind::Put
            };
            s.next_rev = s.next_rev.max(kv.mod_revision + 1);
            s.events.push(WatchEvent {
                watcher,
                session,
                member: name.clone(),
                revision: kv.mod_revision,
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                kind,
                value: String::from_utf8_lossy(&kv.value).into_owned(),
                recv_ns: now,
            });
        }
    }
    drop(tx);
    s
}

fn record_session(
    ctx: &Ctx,
    process: u32,
    watcher: u32,
    member: usize,
    from: i64,
    invoke: u64,
    s: &Session,
) {
    ctx.rec.record(
        process,
        invoke,
        Call::WatchSession {
            watcher,
            member: ctx.topo.names.get(member).cloned().unwrap_or_default(),
            from_revision: from,
        },
        if s.finished {
            Outcome::Ok
        } else {
            Outcome::Info
        },
        Some(Ret::WatchEnded {
            events: s.events.len() as u64,
            last_revision: s.next_rev - 1,
        }),
        s.error.clone(),
        None,
    );
}

/// Runs watcher `watcher` (from 1) until the harness stops it.
pub async fn run(ctx: Arc<Ctx>, process: u32, watcher: u32) -> anyhow::Result<()> {
    let n = ctx.topo.len().max(1);
    let mut member = watcher as usize % n;
    let mut next_rev = 1;
    let finished = |rev: i64| {
        ctx.watch_stop.load(Ordering::Relaxed) && {
            let until = ctx.watch_until.load(Ordering::Relaxed);
            until == 0 || rev > until
        }
    };
    let mut failures = 0u32;
    for session_no in 0u32.. {
        if finished(next_rev) {
            break;
        }
        let invoke = ctx.rec.now();
        let s = session(&ctx, watcher, session_no, member, next_rev, &finished).await;
        record_session(&ctx, process, watcher, member, next_rev, invoke, &s);
        next_rev = s.next_rev;
        let got_events = !s.events.is_empty();
        for e in s.events {
            ctx.rec.event(e);
        }
        if s.finished {
            break;
        }
        // Back off while sessions fail without delivering anything (e.g.
        // the whole cluster is down), up to 2 s between attempts.
        if got_events {
            failures = 0;
        } else {
            failures = (failures + 1).min(5);
        }
        member = (member + 1) % n;
        tokio::time::sleep(Duration::from_millis(100 << failures).min(Duration::from_secs(2)))
            .await;
    }
    Ok(())
}

/// Replays the prefix from revision 1 up to `until` in one session, trying
/// members from `first`; records the events as the canonical history.
pub async fn replay(ctx: &Ctx, first: usize, until: i64) -> anyhow::Result<usize> {
    let n = ctx.topo.len().max(1);
    let done = |rev: i64| rev > until;
    let mut last_error = String::new();
    for attempt in 0..(3 * n) {
        let member = (first + attempt) % n;
        let invoke = ctx.rec.now();
        let s = session(ctx, CANONICAL_WATCHER, attempt as u32, member, 1, &done).await;
        record_session(
            ctx,
            crate::history::HARNESS,
            CANONICAL_WATCHER,
            member,
            1,
            invoke,
            &s,
        );
        if s.finished {
            let count = s.events.len();
            for e in s.events {
                ctx.rec.event(e);
            }
            return Ok(count);
        }
        last_error = s.error.unwrap_or_default();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("could not replay the watch history: {last_error}")
}
