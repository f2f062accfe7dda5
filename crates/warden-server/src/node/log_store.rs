//! openraft's `RaftLogStorage` on top of `storage::log_db`: entries and hard
//! state are encoded with postcard and handed to redb off the async threads.
//!
//! What is stored: each entry (openraft `Entry` of `types::Request`) under
//! its index, and the vote (`Vote`), the committed log id
//! (`Option<LogId>`) and the last purged log id (`LogId`) under the meta keys
//! `vote`, `committed`, `purged`. Each value is the postcard payload of a log
//! record; `log_db` frames it with the format version and checksum and
//! refuses versions it does not know, and upgrades a log written before
//! records carried a version when it is opened (logged here).
//!
//! Must never: acknowledge an append (the `IOFlushed` callback) before the
//! batch is durable, return a vote that was not persisted, or write a
//! payload whose encoding differs from the current format version's (the
//! golden test below pins it).

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::RaftLogReader;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::{Entry, LogId, TypeConfig, Vote};
use warden_core::storage::log_db::LogDb;

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

#[derive(Clone)]
pub struct LogStore {
    db: Arc<LogDb>,
}

/// Payload bytes of log entries sent to a follower in one replication
/// message (etcd's `MaxSizePerMsg` is 1 MiB too). One entry larger than
/// this (up to the request limit) still goes alone.
pub const REPLICATION_BATCH_BYTES: usize = 1024 * 1024;

fn enc<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(|e| io::Error::other(format!("encode raft record: {e}")))
}

fn dec<T: DeserializeOwned>(db: &LogDb, what: &str, b: &[u8]) -> io::Result<T> {
    postcard::from_bytes(b).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "raft log {}: cannot decode {what}: {e}",
                db.path().display()
            ),
        )
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("log io task failed: {e}")))?
}

impl LogStore {
    pub fn new(db: Arc<LogDb>) -> Self {
        if let Some(from) = db.upgraded_from() {
            tracing::info!(
                log = %db.path().display(),
                from,
                to = warden_core::storage::format::FORMAT_VERSION,
                "upgraded the raft log's format (builds before this one cannot read it now)"
            );
        }
        Self { db }
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &'static str) -> io::Result<Option<T>> {
        match self.db.get_meta(key)? {
            None => Ok(None),
            Some(b) => Ok(Some(dec(&self.db, key, &b)?)),
        }
    }

    async fn put_meta<T: Serialize>(&self, key: &'static str, v: &T) -> io::Result<()> {
        let bytes = enc(v)?;
        let db = self.db.clone();
        blocking(move || Ok(db.put_meta(key, &bytes)?)).await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let db = self.db.clone();
        let lo = range.start_bound().cloned();
        let hi = range.end_bound().cloned();
        blocking(move || {
            let raw = db.read_range((lo, hi))?;
            raw.iter()
                .map(|(i, b)| dec(&db, &format!("entry {i}"), b))
                .collect()
        })
        .await
    }

    /// What replication sends in one message: at most
    /// [`REPLICATION_BATCH_BYTES`] of entries (and at least one entry).
    /// openraft caps a batch only by count (`max_payload_entries`); without
    /// this, a follower behind on large entries would be sent one message
    /// past the peer message limit, refuse it, and be sent it again forever.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        let db = self.db.clone();
        blocking(move || {
            let raw = db.read_range_limited(start..end, REPLICATION_BATCH_BYTES)?;
            raw.iter()
                .map(|(i, b)| dec(&db, &format!("entry {i}"), b))
                .collect()
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        // Stored as a plain `LogId` (see `purge`).
        let purged: Option<LogId> = self.get_meta::<LogId>(PURGED)?;
        let last = match self.db.last()? {
            Some((i, b)) => {
                let e: Entry = dec(&self.db, &format!("entry {i}"), &b)?;
                Some(e.log_id)
            }
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_meta(VOTE, vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.put_meta(COMMITTED, &committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = Vec::new();
        for e in entries {
            batch.push((e.log_id.index, enc(&e)?));
        }
        let db = self.db.clone();
        let res = blocking(move || Ok(db.append(&batch)?)).await;
        match res {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let db = self.db.clone();
        let idx = last_log_id.map(|l| l.index);
        blocking(move || Ok(db.truncate_after(idx)?)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let meta = enc(&log_id)?;
        let db = self.db.clone();
        let upto = log_id.index;
        blocking(move || Ok(db.purge_upto(upto, PURGED, &meta)?)).await?;
        tracing::info!(upto, "compacted raft log");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{blank_ent, log_id};

    /// Regression: the purged log id was written as `Option<LogId>` and read
    /// back as `LogId`, so a restart after any purge read a garbage index
    /// and refused to start ("Cannot re-apply logs").
    #[tokio::test]
    async fn purged_log_id_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.redb");
        {
            let db = warden_core::storage::log_db::LogDb::open(&path).expect("open");
            let mut st = LogStore::new(Arc::new(db));
            let entries: Vec<Entry> = (1..=10).map(|i| blank_ent::<TypeConfig>(3, 7, i)).collect();
            let db2 = st.db.clone();
            blocking(move || {
                let batch: Vec<(u64, Vec<u8>)> = entries
                    .iter()
                    .map(|e| Ok((e.log_id.index, enc(e)?)))
                    .collect::<io::Result<_>>()?;
                Ok(db2.append(&batch)?)
            })
            .await
            .expect("append");
            st.purge(log_id::<TypeConfig>(3, 7, 6))
                .await
                .expect("purge");
        }
        let db = warden_core::storage::log_db::LogDb::open(&path).expect("reopen");
        let mut st = LogStore::new(Arc::new(db));
        let state = st.get_log_state().await.expect("log state");
        assert_eq!(
            state.last_purged_log_id,
            Some(log_id::<TypeConfig>(3, 7, 6))
        );
        assert_eq!(state.last_log_id, Some(log_id::<TypeConfig>(3, 7, 10)));
        let rest = st.try_get_log_entries(7..11).await.expect("read");
        assert_eq!(rest.len(), 4);
    }

    /// Golden bytes: the records this build writes for fixed values
    /// (`warden-core/tests/fixtures/v1-raft-records.txt`, which `log_db`'s
    /// tests also show a pre-change log upgrades to, byte for byte) decode
    /// to those values, and encoding the values gives the same payloads.
    #[tokio::test]
    async fn golden_records_decode_and_reencode_exactly() {
        use crate::node::state_machine::samples;
        use warden_core::storage::format;
        let txt = include_str!("../../../warden-core/tests/fixtures/v1-raft-records.txt");
        let mut payloads = std::collections::BTreeMap::new();
        for line in txt.lines() {
            let mut it = line.split(' ');
            let (_table, key, hex) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
            let raw: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            let (version, payload) = format::decode_record(&raw).unwrap();
            assert_eq!(version, 1);
            payloads.insert(key.to_string(), payload.to_vec());
        }
        let e = samples::entry();
        assert_eq!(payloads["5"], enc(&e).unwrap(), "entry encoding changed");
        assert_eq!(payloads[VOTE], enc(&samples::vote()).unwrap());
        assert_eq!(payloads[COMMITTED], enc(&samples::committed()).unwrap());
        assert_eq!(payloads[PURGED], enc(&samples::purged()).unwrap());

        // Read back through the store, as a restarting member does.
        let dir = tempfile::tempdir().expect("tempdir");
        let db = LogDb::open(&dir.path().join("raft.redb")).expect("open");
        db.append(&[(5, payloads["5"].clone())]).unwrap();
        for key in [VOTE, COMMITTED, PURGED] {
            db.put_meta(key, &payloads[key]).unwrap();
        }
        let mut st = LogStore::new(Arc::new(db));
        assert_eq!(st.read_vote().await.unwrap(), Some(samples::vote()));
        assert_eq!(st.read_committed().await.unwrap(), samples::committed());
        let state = st.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(samples::purged()));
        assert_eq!(state.last_log_id, Some(e.log_id));
        let got = st.try_get_log_entries(5..6).await.unwrap();
        assert_eq!(format!("{got:?}"), format!("{:?}", vec![e]));
    }
}
