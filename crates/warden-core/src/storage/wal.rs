//! The log's journal (`raft.wal`, next to `raft.redb`): where appended
//! entries are made durable with one small sequential write and one
//! `fdatasync`, before `log_db` makes them durable in the redb file at the
//! next checkpoint.
//!
//! Why: a durable redb commit rewrites about seven scattered 4 KiB pages (the
//! B-tree path, the table and system trees, the header), and an `fdatasync`
//! costs with the pages it flushes: on the development disk 0.45 ms for
//! eight scattered pages against 0.09 ms for one appended record
//! (docs/benchmarks.md, "Write path: fsyncs per commit").
//!
//! # File layout
//!
//! | bytes | field                                                      |
//! |-------|------------------------------------------------------------|
//! | 8     | magic `b"WDNWAL\0\0"`                                      |
//! | 4     | journal version (`u32` LE, currently 1)                    |
//! | 4     | zero                                                       |
//! |       | records, one after another, then zeros to the end          |
//!
//! A record:
//!
//! | bytes | field                                                      |
//! |-------|------------------------------------------------------------|
//! | 4     | body length `n` (`u32` LE, never 0)                        |
//! | 4     | CRC32 (IEEE) of the body, LE                               |
//! | n     | body                                                       |
//!
//! A body: the number of entries (`u32` LE), each entry as its index (`u64`
//! LE), length (`u32` LE) and bytes, then `1` and the committed log id's
//! length (`u32` LE) and bytes, or `0`. The bytes are the payloads `log_db`
//! stores (postcard, version [`super::format::FORMAT_VERSION`]).
//!
//! The file is sized up front ([`CAPACITY`], sparse), so an append does not
//! change its size; a zero length ends the records. Reading stops at the
//! first record that is cut short or fails its checksum: a record torn by a
//! crash was never acknowledged (acknowledgement waits for its
//! `fdatasync`), so dropping it and everything after is what recovery must
//! do. The bytes from there on are zeroed before anything is appended, so a
//! later record can never be followed by an old fragment that reads as one.
//!
//! Must never: acknowledge an append before its `fdatasync` returned, or
//! read a record past a damaged one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The journal's magic bytes.
pub const MAGIC: [u8; 8] = *b"WDNWAL\0\0";
/// The journal version this build writes and reads.
pub const WAL_VERSION: u32 = 1;
/// Header length: magic, version, zero.
pub const HEADER_LEN: u64 = 16;
/// Size of the journal file; a batch that would not fit is written to the
/// log file directly (a checkpoint) instead.
pub const CAPACITY: u64 = 32 * 1024 * 1024;
const RECORD_HEADER: usize = 8;

/// Errors of the journal; every one names the file.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("raft log journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("raft log journal {path}: not a warden journal (bad magic bytes)")]
    BadMagic { path: PathBuf },
    #[error(
        "raft log journal {path}: written in journal version {found}, this build reads version \
         {WAL_VERSION}; start this member with the newer warden that wrote it"
    )]
    UnsupportedVersion { path: PathBuf, found: u32 },
}

/// One record: entries `(index, payload)` and an optional committed log id
/// payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WalRecord {
    pub entries: Vec<(u64, Vec<u8>)>,
    pub committed: Option<Vec<u8>>,
}

/// An open journal, positioned after its last valid record.
pub struct Wal {
    file: File,
    path: PathBuf,
    /// Offset where the next record goes.
    end: u64,
}

/// The record bytes (length, checksum, body) of `entries` and `committed`.
pub fn encode(entries: &[(u64, Vec<u8>)], committed: Option<&[u8]>) -> io::Result<Vec<u8>> {
    let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "journal record over 4 GiB");
    let mut body = Vec::with_capacity(
        16 + entries.iter().map(|(_, b)| b.len() + 12).sum::<usize>()
            + committed.map_or(0, |c| c.len()),
    );
    let count = u32::try_from(entries.len()).map_err(|_| too_big())?;
    body.extend_from_slice(&count.to_le_bytes());
    for (index, bytes) in entries {
        body.extend_from_slice(&index.to_le_bytes());
        let n = u32::try_from(bytes.len()).map_err(|_| too_big())?;
        body.extend_from_slice(&n.to_le_bytes());
        body.extend_from_slice(bytes);
    }
    match committed {
        Some(c) => {
            body.push(1);
            let n = u32::try_from(c.len()).map_err(|_| too_big())?;
            body.extend_from_slice(&n.to_le_bytes());
            body.extend_from_slice(c);
        }
        None => body.push(0),
    }
    let len = u32::try_from(body.len()).map_err(|_| too_big())?;
    let mut out = Vec::with_capacity(RECORD_HEADER + body.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads `n` bytes at `*at` from `buf`, advancing `*at`.
fn take<'a>(buf: &'a [u8], at: &mut usize, n: usize) -> Option<&'a [u8]> {
    let s = buf.get(*at..at.checked_add(n)?)?;
    *at += n;
    Some(s)
}

fn u32_at(buf: &[u8], at: &mut usize) -> Option<u32> {
    take(buf, at, 4).and_then(|s| s.try_into().ok().map(u32::from_le_bytes))
}

/// Decodes a record body whose checksum matched; `None` if it is malformed.
fn decode_body(body: &[u8]) -> Option<WalRecord> {
    let mut at = 0;
    let count = u32_at(body, &mut at)?;
    let mut entries = Vec::new();
    for _ in 0..count {
        let index = u64::from_le_bytes(take(body, &mut at, 8)?.try_into().ok()?);
        let n = u32_at(body, &mut at)? as usize;
        entries.push((index, take(body, &mut at, n)?.to_vec()));
    }
    let committed = match take(body, &mut at, 1)?.first()? {
        0 => None,
        1 => {
            let n = u32_at(body, &mut at)? as usize;
            Some(take(body, &mut at, n)?.to_vec())
        }
        _ => return None,
    };
    (at == body.len()).then_some(WalRecord { entries, committed })
}

/// The valid records at the start of `data` (the file after its header),
/// and the offset (from the start of `data`) after the last of them.
pub fn decode_records(data: &[u8]) -> (Vec<WalRecord>, usize) {
    let mut records = Vec::new();
    let mut at = 0usize;
    loop {
        let mut p = at;
        let Some(len) = u32_at(data, &mut p) else {
            break;
        };
        let Some(crc) = u32_at(data, &mut p) else {
            break;
        };
        if len == 0 {
            break;
        }
        let Some(body) = take(data, &mut p, len as usize) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        let Some(record) = decode_body(body) else {
            break;
        };
        records.push(record);
        at = p;
    }
    (records, at)
}

impl Wal {
    /// Opens the journal at `path`, creating it (durably, directory entry
    /// included) if missing; returns it with the records it holds.
    pub fn open(path: &Path) -> Result<(Self, Vec<WalRecord>), WalError> {
        let err = |source: io::Error| WalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let exists = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(err)?;
        let mut wal = Self {
            file,
            path: path.to_path_buf(),
            end: HEADER_LEN,
        };
        let size = wal.file.metadata().map_err(err)?.len();
        if !exists || size < HEADER_LEN {
            // New (or created but never given its header): nothing in it
            // was ever acknowledged.
            wal.format()?;
            if let Some(dir) = path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
            }
            return Ok((wal, Vec::new()));
        }
        let mut header = [0u8; HEADER_LEN as usize];
        wal.file.read_exact_at(&mut header, 0).map_err(err)?;
        if header[..8] != MAGIC {
            return Err(WalError::BadMagic {
                path: path.to_path_buf(),
            });
        }
        let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if version != WAL_VERSION {
            return Err(WalError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
            });
        }
        let mut data =
            vec![0u8; usize::try_from(size - HEADER_LEN).map_err(|e| err(io::Error::other(e)))?];
        wal.file.read_exact_at(&mut data, HEADER_LEN).map_err(err)?;
        let (records, valid) = decode_records(&data);
        wal.end = HEADER_LEN + valid as u64;
        // Zero whatever follows the last valid record (a torn record, or
        // nothing), so no fragment of it can follow a later record.
        if data[valid..].iter().any(|b| *b != 0) || size != CAPACITY.max(wal.end) {
            wal.file.set_len(wal.end).map_err(err)?;
            wal.file.set_len(CAPACITY.max(wal.end)).map_err(err)?;
            wal.file.sync_data().map_err(err)?;
        }
        Ok((wal, records))
    }

    /// Writes the header and empties the journal, durably.
    fn format(&mut self) -> Result<(), WalError> {
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&WAL_VERSION.to_le_bytes());
        self.file
            .set_len(0)
            .and_then(|()| self.file.write_all_at(&header, 0))
            .and_then(|()| self.file.set_len(CAPACITY))
            .and_then(|()| self.file.sync_all())
            .map_err(|source| self.io(source))?;
        self.end = HEADER_LEN;
        Ok(())
    }

    fn io(&self, source: io::Error) -> WalError {
        WalError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Whether `record_len` more bytes fit.
    pub fn fits(&self, record_len: usize) -> bool {
        self.end.saturating_add(record_len as u64) <= CAPACITY
    }

    /// Whether the journal holds no records.
    pub fn is_empty(&self) -> bool {
        self.end == HEADER_LEN
    }

    /// Appends an encoded record (from [`encode`]); durable when this
    /// returns. The caller checks [`Wal::fits`] first.
    pub fn append(&mut self, record: &[u8]) -> Result<(), WalError> {
        self.file
            .write_all_at(record, self.end)
            .and_then(|()| self.file.sync_data())
            .map_err(|source| self.io(source))?;
        self.end += record.len() as u64;
        Ok(())
    }

    /// Drops every record, durably: called once the log file holds them.
    pub fn reset(&mut self) -> Result<(), WalError> {
        if self.is_empty() {
            return Ok(());
        }
        self.file
            .set_len(HEADER_LEN)
            .and_then(|()| self.file.set_len(CAPACITY))
            .and_then(|()| self.file.sync_data())
            .map_err(|source| self.io(source))?;
        self.end = HEADER_LEN;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ix: &[u64], committed: Option<&[u8]>) -> WalRecord {
        WalRecord {
            entries: ix
                .iter()
                .map(|i| (*i, vec![*i as u8; *i as usize]))
                .collect(),
            committed: committed.map(<[u8]>::to_vec),
        }
    }

    fn write(wal: &mut Wal, r: &WalRecord) {
        let bytes = encode(&r.entries, r.committed.as_deref()).unwrap();
        assert!(wal.fits(bytes.len()));
        wal.append(&bytes).unwrap();
    }

    /// Golden bytes: the record layout in the module docs, pinned.
    #[test]
    fn record_encoding_is_pinned() {
        let bytes = encode(&[(5, vec![0xaa, 0xbb])], Some(&[0x01])).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "180000001acb917d\
             01000000\
             0500000000000000\
             02000000aabb\
             01\
             0100000001"
        );
        let (records, end) = decode_records(&bytes);
        assert_eq!(
            records,
            vec![WalRecord {
                entries: vec![(5, vec![0xaa, 0xbb])],
                committed: Some(vec![1]),
            }]
        );
        assert_eq!(end, bytes.len());
    }

    #[test]
    fn records_survive_reopen_and_reset_empties() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.wal");
        let want = vec![
            rec(&[1, 2], None),
            rec(&[3], Some(b"c3")),
            rec(&[], Some(b"c4")),
        ];
        {
            let (mut wal, got) = Wal::open(&path).unwrap();
            assert!(got.is_empty() && wal.is_empty());
            for r in &want {
                write(&mut wal, r);
            }
        }
        let (mut wal, got) = Wal::open(&path).unwrap();
        assert_eq!(got, want);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), CAPACITY);
        wal.reset().unwrap();
        drop(wal);
        let (wal, got) = Wal::open(&path).unwrap();
        assert!(got.is_empty() && wal.is_empty());
    }

    /// A crash mid-append leaves a torn record: it and everything after are
    /// dropped, the bytes are zeroed, and appending goes on from there.
    #[test]
    fn a_torn_record_is_dropped_and_zeroed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.wal");
        let (mut wal, _) = Wal::open(&path).unwrap();
        write(&mut wal, &rec(&[1], None));
        write(&mut wal, &rec(&[2], None));
        let torn_at = wal.end;
        // Half of a third record reached the disk.
        let third = encode(&rec(&[3, 4, 5], None).entries, None).unwrap();
        wal.file
            .write_all_at(&third[..third.len() / 2], torn_at)
            .unwrap();
        drop(wal);
        let (mut wal, got) = Wal::open(&path).unwrap();
        assert_eq!(got, vec![rec(&[1], None), rec(&[2], None)]);
        assert_eq!(wal.end, torn_at);
        let mut rest = vec![0u8; third.len()];
        wal.file.read_exact_at(&mut rest, torn_at).unwrap();
        assert!(rest.iter().all(|b| *b == 0), "torn bytes zeroed");
        // A short record now, then the old fragment would have followed.
        write(&mut wal, &rec(&[3], None));
        drop(wal);
        let (_, got) = Wal::open(&path).unwrap();
        assert_eq!(got, vec![rec(&[1], None), rec(&[2], None), rec(&[3], None)]);
    }

    /// A flipped bit fails the checksum: that record and the rest are not
    /// read.
    #[test]
    fn a_damaged_record_ends_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.wal");
        let (mut wal, _) = Wal::open(&path).unwrap();
        write(&mut wal, &rec(&[1], None));
        let second_at = wal.end;
        write(&mut wal, &rec(&[2], None));
        write(&mut wal, &rec(&[3], None));
        let mut b = [0u8; 1];
        wal.file.read_exact_at(&mut b, second_at + 12).unwrap();
        wal.file.write_all_at(&[b[0] ^ 1], second_at + 12).unwrap();
        drop(wal);
        let (_, got) = Wal::open(&path).unwrap();
        assert_eq!(got, vec![rec(&[1], None)]);
    }

    #[test]
    fn foreign_files_and_future_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.wal");
        std::fs::write(&path, [7u8; 64]).unwrap();
        let e = Wal::open(&path).err().unwrap().to_string();
        assert!(e.contains("bad magic") && e.contains("raft.wal"), "{e}");
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&9u32.to_le_bytes());
        header.extend_from_slice(&[0; 4]);
        std::fs::write(&path, &header).unwrap();
        let e = Wal::open(&path).err().unwrap().to_string();
        assert!(e.contains("journal version 9"), "{e}");
    }
}
