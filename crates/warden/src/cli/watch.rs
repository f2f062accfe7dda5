//! `warden watch`: prints changes to a key or prefix as they happen.
//!
//! Owns: the watch flags and the event output (etcdctl's text, or JSON).
//! The client library's `Watcher` moves the stream to the next endpoint
//! when one fails, resuming from the revision after the last event.
//!
//! Must never: skip an event or print one twice across an endpoint switch,
//! or carry on silently when the server cancels the watch (a compacted start
//! revision is an error).

use anyhow::{anyhow, bail};
use clap::Args;

use super::common::print;
use super::Format;
use warden_client::{Client, WatchOptions};

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
    let opts = WatchOptions {
        prefix: a.prefix,
        start_revision: a.rev.max(0),
        prev_kv: a.prev_kv,
    };
    let mut watcher = client.watch(a.key.clone().into_bytes(), opts);
    while let Some(batch) = watcher.next().await {
        let batch = batch.map_err(|e| anyhow!("watch was canceled: {}", e.message()))?;
        let mut text = String::new();
        for ev in &batch.events {
            if f == Format::Json {
                text.push_str(&format!("{}\n", event_json(ev)));
            } else {
                text.push_str(&event_text(ev, a.prev_kv));
            }
        }
        print(&text)?;
    }
    bail!("the watch ended")
}
