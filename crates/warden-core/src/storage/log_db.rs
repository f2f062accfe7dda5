//! The durable Raft log and hard state, kept in one redb file (`raft.redb`).
//!
//! Owns: entry records keyed by log index, and a small metadata table (vote,
//! committed log id, last purged log id). Every record is framed as
//! `[crc32 of body: u32 LE][body]`, so a damaged record is detected when read
//! and reported with the file and index instead of being handed to Raft.
//!
//! Durability: each call is one redb write transaction committed with
//! immediate durability (fsync) before it returns. Raft hands us whole
//! batches of entries, so one fsync covers many proposals (group commit).
//! redb's commit protocol is atomic: a commit torn by a crash is rolled back
//! on the next open, which is how a torn tail is truncated.
//!
//! Must never: interpret entries (bytes in, bytes out), or acknowledge a write
//! before its transaction has committed.

use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Errors of the log store; every one names the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("raft log {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("raft log {path}: corrupt record at index {index}: {reason}")]
    Corrupt {
        path: PathBuf,
        index: u64,
        reason: String,
    },
    #[error("raft log {path}: corrupt metadata {key:?}: {reason}")]
    CorruptMeta {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

impl From<LogError> for std::io::Error {
    fn from(e: LogError) -> Self {
        std::io::Error::other(e)
    }
}

/// Handle to the log file. Cheap to share behind an `Arc`; redb serialises
/// writers internally.
pub struct LogDb {
    db: Database,
    path: PathBuf,
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn unframe(raw: &[u8]) -> Result<&[u8], String> {
    if raw.len() < 4 {
        return Err(format!(
            "record of {} bytes is shorter than its checksum",
            raw.len()
        ));
    }
    let (crc, body) = raw.split_at(4);
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let got = crc32fast::hash(body);
    if want != got {
        return Err(format!(
            "checksum mismatch (stored {want:08x}, computed {got:08x})"
        ));
    }
    Ok(body)
}

impl LogDb {
    /// Opens (or creates) the log file at `path`.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let db = Database::create(path).map_err(|e| LogError::Db {
            path: path.to_path_buf(),
            source: Box::new(e.into()),
        })?;
        let this = Self {
            db,
            path: path.to_path_buf(),
        };
        // Make sure both tables exist so readers never see "table missing".
        this.write(|w| {
            w.open_table(ENTRIES)?;
            w.open_table(META)?;
            Ok(())
        })?;
        Ok(this)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl Into<redb::Error>) -> LogError {
        LogError::Db {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), LogError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        f(&txn).map_err(|e| self.err(e))?;
        txn.commit().map_err(|e| self.err(e))
    }

    /// Appends (or overwrites) entries; durable when this returns.
    pub fn append(&self, entries: &[(u64, Vec<u8>)]) -> Result<(), LogError> {
        self.write(|w| {
            let mut t = w.open_table(ENTRIES)?;
            for (index, body) in entries {
                t.insert(*index, frame(body).as_slice())?;
            }
            Ok(())
        })
    }

    /// Entries with indexes in `range`, in order, checksums verified.
    pub fn read_range(
        &self,
        range: impl RangeBounds<u64>,
    ) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        let lo = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let hi = match range.end_bound() {
            Bound::Included(x) => Some(*x),
            Bound::Excluded(0) => return Ok(Vec::new()),
            Bound::Excluded(x) => Some(x - 1),
            Bound::Unbounded => None,
        };
        if hi.is_some_and(|h| h < lo) {
            return Ok(Vec::new());
        }
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(ENTRIES).map_err(|e| self.err(e))?;
        let iter = match hi {
            Some(h) => t.range(lo..=h),
            None => t.range(lo..),
        }
        .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let index = k.value();
            let body = unframe(v.value()).map_err(|reason| LogError::Corrupt {
                path: self.path.clone(),
                index,
                reason,
            })?;
            out.push((index, body.to_vec()));
        }
        Ok(out)
    }

    /// The last entry, if any.
    pub fn last(&self) -> Result<Option<(u64, Vec<u8>)>, LogError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(ENTRIES).map_err(|e| self.err(e))?;
        let Some((k, v)) = t.last().map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let index = k.value();
        let body = unframe(v.value()).map_err(|reason| LogError::Corrupt {
            path: self.path.clone(),
            index,
            reason,
        })?;
        Ok(Some((index, body.to_vec())))
    }

    /// Checks every record's checksum; returns the number of records. Run at
    /// start so a damaged log stops the server before it serves anything.
    pub fn verify(&self) -> Result<u64, LogError> {
        Ok(self.read_range(..)?.len() as u64)
    }

    /// Deletes entries with index > `index` (all of them when `None`).
    pub fn truncate_after(&self, index: Option<u64>) -> Result<(), LogError> {
        let from = index.map_or(0, |i| i.saturating_add(1));
        self.write(|w| {
            let mut t = w.open_table(ENTRIES)?;
            t.retain_in(from.., |_, _| false)?;
            Ok(())
        })
    }

    /// Deletes entries with index <= `index` and records `meta_key = meta`
    /// in the same transaction.
    pub fn purge_upto(&self, index: u64, meta_key: &str, meta: &[u8]) -> Result<(), LogError> {
        self.write(|w| {
            let mut t = w.open_table(ENTRIES)?;
            t.retain_in(..=index, |_, _| false)?;
            let mut m = w.open_table(META)?;
            m.insert(meta_key, frame(meta).as_slice())?;
            Ok(())
        })
    }

    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), LogError> {
        self.write(|w| {
            let mut m = w.open_table(META)?;
            m.insert(key, frame(value).as_slice())?;
            Ok(())
        })
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, LogError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(META).map_err(|e| self.err(e))?;
        let Some(v) = t.get(key).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let body = unframe(v.value()).map_err(|reason| LogError::CorruptMeta {
            path: self.path.clone(),
            key: key.to_string(),
            reason,
        })?;
        Ok(Some(body.to_vec()))
    }

    /// Test hook: stores raw bytes at `index` without framing, to simulate a
    /// record damaged on disk.
    #[cfg(test)]
    fn put_raw(&self, index: u64, raw: &[u8]) -> Result<(), LogError> {
        self.write(|w| {
            let mut t = w.open_table(ENTRIES)?;
            t.insert(index, raw)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn open(dir: &tempfile::TempDir) -> LogDb {
        LogDb::open(&dir.path().join("raft.redb")).unwrap()
    }

    #[test]
    fn append_read_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open(&dir);
            db.append(&[
                (1, b"a".to_vec()),
                (2, b"bb".to_vec()),
                (3, b"ccc".to_vec()),
            ])
            .unwrap();
            db.put_meta("vote", b"v1").unwrap();
        }
        let db = open(&dir);
        assert_eq!(
            db.read_range(2..).unwrap(),
            vec![(2, b"bb".to_vec()), (3, b"ccc".to_vec())]
        );
        assert_eq!(db.last().unwrap(), Some((3, b"ccc".to_vec())));
        assert_eq!(db.get_meta("vote").unwrap(), Some(b"v1".to_vec()));
        assert_eq!(db.get_meta("nothing").unwrap(), None);
        assert_eq!(db.verify().unwrap(), 3);
    }

    #[test]
    fn truncate_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let entries: Vec<_> = (1..=10).map(|i| (i, vec![i as u8])).collect();
        db.append(&entries).unwrap();
        db.truncate_after(Some(7)).unwrap();
        assert_eq!(db.last().unwrap().map(|e| e.0), Some(7));
        db.purge_upto(3, "purged", b"3").unwrap();
        let idx: Vec<u64> = db
            .read_range(..)
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(idx, vec![4, 5, 6, 7]);
        assert_eq!(db.get_meta("purged").unwrap(), Some(b"3".to_vec()));
        db.truncate_after(None).unwrap();
        assert_eq!(db.last().unwrap(), None);
    }

    #[test]
    fn corrupt_record_is_reported_with_file_and_index() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open(&dir);
            db.append(&[(1, b"good".to_vec()), (3, b"good".to_vec())])
                .unwrap();
            let mut bad = frame(b"payload");
            bad[5] ^= 0xff; // flip a body bit: checksum no longer matches
            db.put_raw(2, &bad).unwrap();
        }
        let db = open(&dir);
        let err = db.verify().unwrap_err().to_string();
        assert!(err.contains("raft.redb"), "{err}");
        assert!(err.contains("index 2"), "{err}");
        assert!(err.contains("checksum mismatch"), "{err}");
        // Records before the damage are still readable.
        assert_eq!(db.read_range(..2).unwrap(), vec![(1, b"good".to_vec())]);
        // A record too short to hold a checksum is refused too.
        db.put_raw(4, b"ab").unwrap();
        assert!(db
            .read_range(4..)
            .unwrap_err()
            .to_string()
            .contains("shorter"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The log behaves like a BTreeMap under any sequence of appends,
        /// truncations and purges, including across a reopen.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec((0u8..3, 1u64..40, 0usize..5), 1..30)) {
            let dir = tempfile::tempdir().unwrap();
            let mut model = std::collections::BTreeMap::new();
            {
                let db = open(&dir);
                for (op, at, n) in &ops {
                    match op {
                        0 => {
                            let batch: Vec<_> = (*at..*at + *n as u64).map(|i| (i, i.to_le_bytes().to_vec())).collect();
                            for (i, b) in &batch { model.insert(*i, b.clone()); }
                            db.append(&batch).unwrap();
                        }
                        1 => { model.retain(|k, _| *k <= *at); db.truncate_after(Some(*at)).unwrap(); }
                        _ => { model.retain(|k, _| *k > *at); db.purge_upto(*at, "p", b"").unwrap(); }
                    }
                }
            }
            let db = open(&dir);
            let got = db.read_range(..).unwrap();
            let want: Vec<_> = model.into_iter().collect();
            prop_assert_eq!(got, want);
        }
    }
}

#[cfg(test)]
mod dump_v0 {
    use super::*;
    use std::fmt::Write as _;

    #[test]
    #[ignore]
    fn dump_v0_redb() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let db = Database::create(dir.join("v0-raft.redb")).unwrap();
        let r = db.begin_read().unwrap();
        let mut out = String::new();
        for item in r.open_table(ENTRIES).unwrap().iter().unwrap() {
            let (k, v) = item.unwrap();
            let hex: String = v.value().iter().map(|b| format!("{b:02x}")).collect();
            writeln!(out, "entries {} {hex}", k.value()).unwrap();
        }
        for item in r.open_table(META).unwrap().iter().unwrap() {
            let (k, v) = item.unwrap();
            let hex: String = v.value().iter().map(|b| format!("{b:02x}")).collect();
            writeln!(out, "meta {} {hex}", k.value()).unwrap();
        }
        std::fs::write(dir.join("v0-raft-records.txt"), out).unwrap();
    }
}
