//! A configuration watcher: print the keys under `config/`, then every
//! change as it happens. The watch moves to another member when the one it
//! is on fails, and resumes after the last change it printed, so no change
//! is missed or printed twice.
//!
//! ```text
//! cargo run -p warden-client --example config_watcher
//! warden put config/log-level debug      # in another terminal
//! ```
//!
//! Endpoints come from `WARDEN_ENDPOINTS` (comma-separated, default
//! `127.0.0.1:2379`).

use warden_client::{Client, ClientError, ClientOptions, GetOptions, WatchOptions};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let endpoints = std::env::var("WARDEN_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2379".into());
    let client = Client::connect([endpoints], ClientOptions::default()).await?;

    // The current configuration, and the revision it was read at.
    let now = client.get("config/", GetOptions::prefix()).await?;
    for kv in &now.kvs {
        println!(
            "{} = {}",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value)
        );
    }
    let revision = now.header.map_or(0, |h| h.revision);

    // Every change after that revision.
    let opts = WatchOptions {
        prefix: true,
        start_revision: revision + 1,
        ..Default::default()
    };
    let mut watcher = client.watch("config/", opts);
    while let Some(batch) = watcher.next().await {
        for ev in batch?.events {
            let kv = ev.kv.unwrap_or_default();
            let key = String::from_utf8_lossy(&kv.key);
            if ev.r#type == 1 {
                println!("{key} deleted");
            } else {
                println!("{key} = {}", String::from_utf8_lossy(&kv.value));
            }
        }
    }
    Ok(())
}
