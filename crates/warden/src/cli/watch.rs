//! `warden watch`: prints changes to a key or prefix as they happen.
//!
//! Owns: the watch flags, the event output (etcdctl's text, or JSON), and
//! moving the stream to the next endpoint when one fails. A moved watch
//! resumes from the revision after the last event it printed.
//!
//! Must never: skip an event or print one twice across an endpoint switch,
//! or carry on silently when the server cancels the watch (a compacted start
//! revision is an error).

use anyhow::bail;
use clap::Args;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::common::{print, RETRY};
use super::Format;
use warden_client::Client;
use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::watch_client::WatchClient;

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Key to watch (the start of the range with --prefix).
    pub key: String,
    /// Watch every key starting with KEY.
    #[arg(long)]
    pub prefix: bool,
    /// Start from this revision (replaying history); default: from now.
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Also print each key's previous value.
    #[arg(long)]
    pub prev_kv: bool,
}

fn event_text(ev: &warden_proto::mvccpb::Event, prev: bool) -> String {
    let kind = if ev.r#type == 1 { "DELETE" } else { "PUT" };
    let mut s = format!("{kind}\n");
    if prev {
        if let Some(p) = &ev.prev_kv {
            s.push_str(&format!(
                "{}\n{}\n",
                String::from_utf8_lossy(&p.key),
                String::from_utf8_lossy(&p.value)
            ));
        }
    }
    if let Some(kv) = &ev.kv {
        s.push_str(&format!(
            "{}\n{}\n",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value)
        ));
    }
    s
}

fn event_json(ev: &warden_proto::mvccpb::Event) -> serde_json::Value {
    let kv = ev.kv.clone().unwrap_or_default();
    serde_json::json!({
        "type": if ev.r#type == 1 { "DELETE" } else { "PUT" },
        "key": String::from_utf8_lossy(&kv.key),
        "value": String::from_utf8_lossy(&kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "prev_value": ev.prev_kv.as_ref().map(|p| String::from_utf8_lossy(&p.value).into_owned()),
    })
}

pub async fn watch_cmd(client: &Client, a: WatchArgs, f: Format) -> anyhow::Result<()> {
    let key = a.key.clone().into_bytes();
    let range_end = if a.prefix {
        warden_client::keys::prefix_range_end(&key)
    } else {
        Vec::new()
    };
    // The next revision to ask for; 0 until the first stream says where
    // "now" is.
    let mut next = a.rev.max(0);
    loop {
        for (ep, ch) in client.stream_channels().await? {
            let (tx, rx) = mpsc::channel(1);
            let create = pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                    pb::WatchCreateRequest {
                        key: key.clone(),
                        range_end: range_end.clone(),
                        start_revision: next,
                        prev_kv: a.prev_kv,
                        ..Default::default()
                    },
                )),
            };
            if tx.send(create).await.is_err() {
                continue;
            }
            let mut stream = match WatchClient::new(ch).watch(ReceiverStream::new(rx)).await {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    client.stream_failed(&e);
                    tracing::debug!("watch via {ep}: {e}");
                    continue;
                }
            };
            loop {
                let resp = match stream.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!("watch via {ep}: {e}");
                        break;
                    }
                };
                if resp.canceled {
                    if resp.compact_revision > 0 {
                        bail!(
                            "watch was canceled: required revision has been compacted (compact revision {})",
                            resp.compact_revision
                        );
                    }
                    bail!("watch was canceled: {}", resp.cancel_reason);
                }
                if resp.created && next == 0 {
                    next = resp.header.as_ref().map_or(0, |h| h.revision) + 1;
                }
                if resp.events.is_empty() {
                    continue;
                }
                let mut text = String::new();
                for ev in &resp.events {
                    if f == Format::Json {
                        text.push_str(&format!("{}\n", event_json(ev)));
                    } else {
                        text.push_str(&event_text(ev, a.prev_kv));
                    }
                    if let Some(kv) = &ev.kv {
                        next = next.max(kv.mod_revision + 1);
                    }
                }
                print(&text)?;
            }
            drop(tx);
        }
        tokio::time::sleep(RETRY).await;
    }
}
