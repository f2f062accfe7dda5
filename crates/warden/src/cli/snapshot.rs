//! `warden snapshot save FILE` (a backup streamed from one member) and
//! `warden snapshot restore FILE --data-dir DIR --name N --initial-cluster …`
//! (seeds a new member's data dir with the backup's key-value, lease and lock
//! state; every member of the new cluster is restored from the same file).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use warden_client::{Client, OpKind};
use warden_proto::etcdserverpb as pb;
use warden_server::node::membership::Identity;
use warden_server::node::{cluster_id_for, types::node_id_for};

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Save a backup of the state of one member (the first endpoint that
    /// answers) to FILE.
    Save { file: PathBuf },
    /// Create a new member's data dir from a backup.
    Restore(RestoreArgs),
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Backup made by `snapshot save` (or `etcdctl snapshot save` against warden).
    pub file: PathBuf,
    /// Data directory to create; must not hold a member already.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Name of the member this data dir is for.
    #[arg(long)]
    pub name: String,
    /// The new cluster, name=peer-addr,... (as given to `warden server`).
    #[arg(long)]
    pub initial_cluster: String,
}

pub async fn snapshot(client: &Client, cmd: SnapshotCommand) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::Save { file } => save(client, file).await,
        SnapshotCommand::Restore(a) => restore(a),
    }
}

async fn save(client: &Client, file: PathBuf) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stream = client
        .request(OpKind::Read, |ch, _| async move {
            pb::maintenance_client::MaintenanceClient::new(ch)
                .snapshot(pb::SnapshotRequest {})
                .await
        })
        .await?;
    let part = file.with_extension("part");
    let mut out =
        std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
    let mut total = 0usize;
    let mut revision = 0;
    while let Some(msg) = stream.message().await.context("receiving the snapshot")? {
        out.write_all(&msg.blob)
            .with_context(|| format!("writing {}", part.display()))?;
        total += msg.blob.len();
        revision = msg.header.map_or(revision, |h| h.revision);
    }
    out.sync_all()
        .with_context(|| format!("syncing {}", part.display()))?;
    drop(out);
    // Refuse to keep a damaged transfer.
    warden_server::node::state_machine::load_backup(&part).with_context(|| {
        format!(
            "the received snapshot is damaged; {} kept for inspection",
            part.display()
        )
    })?;
    std::fs::rename(&part, &file).with_context(|| format!("renaming to {}", file.display()))?;
    println!(
        "Snapshot saved at {} ({total} bytes, revision {revision})",
        file.display()
    );
    Ok(())
}

fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    let initial = super::server::parse_initial_cluster(&a.initial_cluster)?;
    if !initial.contains_key(&a.name) {
        bail!(
            "invalid --initial-cluster: it does not list this member ({})",
            a.name
        );
    }
    let occupied = std::fs::read_dir(&a.data_dir).map(|mut d| d.next().is_some());
    if occupied.unwrap_or(false) {
        bail!(
            "{} is not empty: restore creates a new data dir",
            a.data_dir.display()
        );
    }
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("creating {}", a.data_dir.display()))?;
    let data = warden_server::node::state_machine::restore(&a.file, &a.data_dir.join("snap"))
        .with_context(|| format!("restoring {}", a.file.display()))?;
    Identity {
        name: a.name.clone(),
        id: node_id_for(&a.name),
        cluster_id: cluster_id_for(&initial),
        joined: false,
        removed_at: None,
        listed_at: None,
        log_started: false,
    }
    .save(&a.data_dir)?;
    println!(
        "Restored revision {} ({} keys) into {}; start it with: warden server --name {} --data-dir {} --initial-cluster {} …",
        data.kv.revision(),
        data.kv.mvcc().len(),
        a.data_dir.display(),
        a.name,
        a.data_dir.display(),
        a.initial_cluster
    );
    Ok(())
}
