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
//! A record starts at a multiple of 16 bytes from the start of the file:
//!
//! | bytes | field                                                      |
//! |-------|------------------------------------------------------------|
//! | 4     | body length `n` (`u32` LE, never 0)                        |
//! | 4     | CRC32 (IEEE) of the body, LE                               |
//! | 4     | CRC32 of the 8 bytes above, LE (the header check)          |
//! | 4     | zero                                                       |
//! | n     | body                                                       |
//! | 0-15  | zeros, up to the next multiple of 16                       |
//!
//! A body: the number of entries (`u32` LE), each entry as its index (`u64`
//! LE), length (`u32` LE) and bytes, then `1` and the committed log id's
//! length (`u32` LE) and bytes, or `0`. The bytes are the payloads `log_db`
//! stores (postcard, version [`super::format::FORMAT_VERSION`]).
//!
//! The file is sized up front ([`CAPACITY`], sparse), so an append does not
//! change its size; sixteen zero bytes where a record header would be end
//! the records, and everything after the last record is zeros (appends go there,
//! resets and opens zero it).
//!
//! # Recovery: a torn tail is dropped, damage is an error
//!
//! Appends are written one at a time and each is `fdatasync`ed before the
//! next is written, so a crash can tear only the last record, and the
//! sectors of a torn record that did not reach the disk read as zeros (they
//! were zeros before). The 16-byte alignment keeps a record header inside
//! one 512-byte sector, so a header is either whole or zeros, and the
//! header check tells a whole one from a damaged one: the length of a
//! record is trusted only once its header checked out. Reading therefore
//! stops, without error, at:
//! - a zero header (the end, or a torn record whose first sector was lost);
//! - a record whose checksum fails, if one of its 512-byte sectors is all
//!   zeros (a sector that did not reach the disk) and only zeros follow it.
//!
//! A torn record was never acknowledged (acknowledgement waits for its
//! `fdatasync`), so dropping it is what recovery must do; its bytes are
//! zeroed before anything is appended, so a later record can never be
//! followed by an old fragment that reads as one. Any other bad record (a
//! failed checksum with no zero sector or with data after it, a failed
//! header check, a length past the file's end, a body that does not parse) is damage in the middle of
//! the journal, after which acknowledged appends may follow: opening fails
//! with [`WalError::Damaged`] naming the file and byte offset, and nothing is
//! modified. (As in etcd's WAL, damage that zeroes a whole header, or a
//! flipped bit in the last record when that record has a zero sector, is
//! not told apart from a crash.)
//!
//! Memory: opening reads the file whole, after checking it is no larger
//! than [`CAPACITY`] (the most this build ever writes); a record's length
//! is checked against the bytes left before its body is looked at.
//!
//! Must never: acknowledge an append before its `fdatasync` returned, read
//! a record past a damaged one, or write after a failed write or sync (an
//! `fsync` error can leave pages marked clean that never reached the disk:
//! the journal refuses every later write instead).

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
const RECORD_HEADER: usize = 16;
/// Records start at multiples of this many bytes (file offsets).
const ALIGN: usize = 16;
/// The unit a torn write is assumed to lose whole (a disk sector).
const SECTOR: usize = 512;

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
        "raft log journal {path}: {}, but the log file next to it records that it has a \
         journal: appends acknowledged since the last checkpoint would be lost. Restore this \
         member's data dir from a backup, or empty it and add the member again with --join",
        match size {
            None => "missing".to_string(),
            Some(n) => format!("{n} bytes, shorter than its {HEADER_LEN}-byte header"),
        }
    )]
    Missing { path: PathBuf, size: Option<u64> },
    #[error(
        "raft log journal {path}: written in journal version {found}, this build reads version \
         {WAL_VERSION}; start this member with the newer warden that wrote it"
    )]
    UnsupportedVersion { path: PathBuf, found: u32 },
    #[error(
        "raft log journal {path}: {size} bytes, more than the {CAPACITY} this build writes; not a \
         journal this build wrote"
    )]
    TooLarge { path: PathBuf, size: u64 },
    #[error(
        "raft log journal {path}: record at byte {offset} is damaged ({reason}) and is not a \
         write torn by a crash: acknowledged entries may follow it. The file is left as it is; \
         restore this member from a backup, or remove its data directory and add it back to the \
         cluster"
    )]
    Damaged {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("raft log journal {path}: an earlier write failed ({cause}); no more writes")]
    Poisoned { path: PathBuf, cause: String },
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
    /// Set by a failed write or sync: every later write is refused.
    poisoned: Option<String>,
}

/// The record bytes (length, checksum, body, padding) of `entries` and
/// `committed`.
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
    let mut out = Vec::with_capacity(padded(RECORD_HEADER + body.len()));
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    let check = crc32fast::hash(&out);
    out.extend_from_slice(&check.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&body);
    out.resize(padded(out.len()), 0);
    Ok(out)
}

/// `n` rounded up to a multiple of [`ALIGN`].
fn padded(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
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

/// A record that is neither valid nor a torn tail: where (offset in the
/// records area) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub at: usize,
    pub reason: String,
}

/// Whether the bad record at `at..end` (offsets in `data`, the file after
/// its [`HEADER_LEN`]-byte header; `end` is where its body ends) looks torn
/// by a crash: one of the 512-byte sectors it overlaps (file offsets) is all
/// zeros within it, and nothing but zeros follows it.
fn torn(data: &[u8], at: usize, end: usize) -> bool {
    let header = HEADER_LEN as usize;
    let mut from = at;
    let mut zero_sector = false;
    while from < end {
        // The end of the file sector holding `from`, as an offset in `data`.
        let sector_end = ((from + header) / SECTOR + 1) * SECTOR - header;
        let to = sector_end.min(end);
        if data[from..to].iter().all(|b| *b == 0) {
            zero_sector = true;
            break;
        }
        from = to;
    }
    zero_sector && data[end..].iter().all(|b| *b == 0)
}

/// The valid records at the start of `data` (the file after its header)
/// and the offset (in `data`) after the last of them, where the next record
/// goes. A torn last record is dropped (see the module docs); any other bad
/// record is [`Damage`].
pub fn decode_records(data: &[u8]) -> Result<(Vec<WalRecord>, usize), Damage> {
    let mut records = Vec::new();
    let mut at = 0usize;
    // Ends where no room is left for another header (the records fill the
    // file), or below.
    while let Some(header) = data.get(at..at + RECORD_HEADER) {
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let damage = |reason: String| Damage { at, reason };
        // `header` is RECORD_HEADER (16) bytes long.
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (len, crc, check, zero) = (word(0), word(4), word(8), word(12));
        let mut p = at + RECORD_HEADER;
        if crc32fast::hash(&header[..8]) != check || zero != 0 {
            return Err(damage("header check failed".into()));
        }
        if len == 0 {
            return Err(damage("zero length".into()));
        }
        // Bounded by the bytes left before anything is read or kept.
        let Some(body) = take(data, &mut p, len as usize) else {
            return Err(damage(format!(
                "length {len} runs past the journal's end ({} bytes left)",
                data.len() - at - RECORD_HEADER
            )));
        };
        if crc32fast::hash(body) != crc {
            if torn(data, at, p) {
                break;
            }
            return Err(damage("checksum mismatch".into()));
        }
        let Some(record) = decode_body(body) else {
            return Err(damage(
                "checksum matches but the body does not parse".into(),
            ));
        };
        records.push(record);
        at = padded(p).min(data.len());
    }
    Ok((records, at))
}

impl Wal {
    /// Opens the journal at `path`, creating it (durably, directory entry
    /// included) if missing; returns it with the records it holds. Fails,
    /// changing nothing, on a damaged record (see the module docs).
    pub fn open(path: &Path) -> Result<(Self, Vec<WalRecord>), WalError> {
        Self::open_with(path, false)
    }

    /// Like [`Wal::open`], for a journal known to exist (its log file
    /// records one): a missing file, or one shorter than its header, is
    /// [`WalError::Missing`] rather than a new journal, since the records
    /// it held (acknowledged appends) would be lost without a word.
    pub fn open_existing(path: &Path) -> Result<(Self, Vec<WalRecord>), WalError> {
        Self::open_with(path, true)
    }

    fn open_with(path: &Path, must_exist: bool) -> Result<(Self, Vec<WalRecord>), WalError> {
        if must_exist {
            let size = match std::fs::metadata(path) {
                Ok(m) => Some(m.len()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(source) => {
                    return Err(WalError::Io {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            };
            if size.is_none_or(|n| n < HEADER_LEN) {
                return Err(WalError::Missing {
                    path: path.to_path_buf(),
                    size,
                });
            }
        }
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
            poisoned: None,
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
        if size > CAPACITY {
            return Err(WalError::TooLarge {
                path: path.to_path_buf(),
                size,
            });
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
        // At most CAPACITY - HEADER_LEN bytes (checked above).
        let mut data =
            vec![0u8; usize::try_from(size - HEADER_LEN).map_err(|e| err(io::Error::other(e)))?];
        wal.file.read_exact_at(&mut data, HEADER_LEN).map_err(err)?;
        let (records, valid) = decode_records(&data).map_err(|d| WalError::Damaged {
            path: path.to_path_buf(),
            offset: HEADER_LEN + d.at as u64,
            reason: d.reason,
        })?;
        wal.end = HEADER_LEN + valid as u64;
        // Zero whatever follows the last valid record (a torn record, or
        // nothing), so no fragment of it can follow a later record.
        if data[valid..].iter().any(|b| *b != 0) || size != CAPACITY {
            wal.file.set_len(wal.end).map_err(err)?;
            wal.file.set_len(CAPACITY).map_err(err)?;
            wal.file.sync_all().map_err(err)?;
        }
        Ok((wal, records))
    }

    /// Writes the header and empties the journal, durably.
    fn format(&mut self) -> Result<(), WalError> {
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&WAL_VERSION.to_le_bytes());
        let res = self
            .file
            .set_len(0)
            .and_then(|()| self.file.write_all_at(&header, 0))
            .and_then(|()| self.file.set_len(CAPACITY))
            .and_then(|()| self.file.sync_all());
        self.check(res)?;
        self.end = HEADER_LEN;
        Ok(())
    }

    /// Turns a failed write or sync into an error and poisons the journal.
    fn check(&mut self, res: io::Result<()>) -> Result<(), WalError> {
        res.map_err(|source| {
            self.poisoned = Some(source.to_string());
            WalError::Io {
                path: self.path.clone(),
                source,
            }
        })
    }

    fn writable(&self) -> Result<(), WalError> {
        match &self.poisoned {
            Some(cause) => Err(WalError::Poisoned {
                path: self.path.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Whether `record_len` more bytes fit.
    pub fn fits(&self, record_len: usize) -> bool {
        self.end.saturating_add(record_len as u64) <= CAPACITY
    }

    /// Bytes in use, header included.
    pub fn len(&self) -> u64 {
        self.end
    }

    /// Whether the journal holds no records.
    pub fn is_empty(&self) -> bool {
        self.end == HEADER_LEN
    }

    /// Appends an encoded record (from [`encode`]); durable when this
    /// returns. The caller checks [`Wal::fits`] first.
    pub fn append(&mut self, record: &[u8]) -> Result<(), WalError> {
        self.writable()?;
        if !self.fits(record.len()) || !record.len().is_multiple_of(ALIGN) {
            return Err(WalError::Io {
                path: self.path.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "record of {} bytes does not fit at byte {} or is not padded",
                        record.len(),
                        self.end
                    ),
                ),
            });
        }
        let res = self
            .file
            .write_all_at(record, self.end)
            .and_then(|()| self.file.sync_data());
        self.check(res)?;
        self.end += record.len() as u64;
        Ok(())
    }

    /// Drops every record, durably: called once the log file holds them.
    /// `fsync`, not `fdatasync`: the truncation must be on disk before
    /// records are written over the old ones.
    pub fn reset(&mut self) -> Result<(), WalError> {
        self.writable()?;
        if self.is_empty() {
            return Ok(());
        }
        let res = self
            .file
            .set_len(HEADER_LEN)
            .and_then(|()| self.file.set_len(CAPACITY))
            .and_then(|()| self.file.sync_all());
        self.check(res)?;
        self.end = HEADER_LEN;
        Ok(())
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(ix: &[u64], committed: Option<&[u8]>) -> WalRecord {
        WalRecord {
            entries: ix
                .iter()
                .map(|i| (*i, vec![*i as u8; *i as usize]))
                .collect(),
            committed: committed.map(<[u8]>::to_vec),
        }
    }

    /// A record of one entry of `n` bytes, none of them zero.
    fn big(index: u64, n: usize) -> WalRecord {
        WalRecord {
            entries: vec![(index, (0..n).map(|i| (i % 251) as u8 + 1).collect())],
            committed: None,
        }
    }

    fn bytes(r: &WalRecord) -> Vec<u8> {
        encode(&r.entries, r.committed.as_deref()).unwrap()
    }

    fn write(wal: &mut Wal, r: &WalRecord) {
        let b = bytes(r);
        assert!(wal.fits(b.len()));
        wal.append(&b).unwrap();
    }

    fn read_at(path: &Path, at: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        File::open(path).unwrap().read_exact_at(&mut b, at).unwrap();
        b
    }

    fn write_at(path: &Path, at: u64, b: &[u8]) {
        OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .write_all_at(b, at)
            .unwrap();
    }

    /// Golden bytes: the record layout in the module docs, pinned.
    #[test]
    fn record_encoding_is_pinned() {
        let bytes = encode(&[(5, vec![0xaa, 0xbb])], Some(&[0x01])).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "180000001acb917d778dcc2e00000000\
             01000000\
             0500000000000000\
             02000000aabb\
             01\
             0100000001\
             0000000000000000"
        );
        let (records, end) = decode_records(&bytes).unwrap();
        assert_eq!(
            records,
            vec![WalRecord {
                entries: vec![(5, vec![0xaa, 0xbb])],
                committed: Some(vec![1]),
            }]
        );
        assert_eq!(end, bytes.len());
        // A body that is not a multiple of 8 is padded with zeros.
        let bytes = encode(&[], None).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "050000001df722c6bf1a8fea00000000\
             0000000000\
             0000000000000000000000"
        );
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
                assert_eq!(wal.end % ALIGN as u64, 0, "records stay aligned");
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

    /// A crash mid-append leaves a torn record (a sector of it never reached
    /// the disk): it is dropped, its bytes are zeroed, and appending goes on
    /// from there.
    #[test]
    fn a_torn_record_is_dropped_and_zeroed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.wal");
        let (mut wal, _) = Wal::open(&path).unwrap();
        write(&mut wal, &rec(&[1], None));
        write(&mut wal, &rec(&[2], None));
        let torn_at = wal.end;
        // The first 600 bytes of a 2000-byte record reached the disk.
        let third = bytes(&big(3, 2000));
        wal.file.write_all_at(&third[..600], torn_at).unwrap();
        drop(wal);
        let (mut wal, got) = Wal::open(&path).unwrap();
        assert_eq!(got, vec![rec(&[1], None), rec(&[2], None)]);
        assert_eq!(wal.end, torn_at);
        assert!(
            read_at(&path, torn_at, third.len()).iter().all(|b| *b == 0),
            "torn bytes zeroed"
        );
        // A short record now, where the old fragment would have followed.
        write(&mut wal, &rec(&[3], None));
        drop(wal);
        let (_, got) = Wal::open(&path).unwrap();
        assert_eq!(got, vec![rec(&[1], None), rec(&[2], None), rec(&[3], None)]);
    }

    /// A torn record whose first sector (its header) was lost and a later
    /// one written: a zero header ends the records.
    #[test]
    fn a_torn_record_without_its_header_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.wal");
        let (mut wal, _) = Wal::open(&path).unwrap();
        write(&mut wal, &rec(&[1], None));
        let torn_at = wal.end;
        let second = bytes(&big(2, 3000));
        wal.file
            .write_all_at(&second[1500..], torn_at + 1500)
            .unwrap();
        drop(wal);
        let (wal, got) = Wal::open(&path).unwrap();
        assert_eq!(got, vec![rec(&[1], None)]);
        assert_eq!(wal.end, torn_at);
        assert!(read_at(&path, torn_at, second.len())
            .iter()
            .all(|b| *b == 0));
    }

    /// A flipped bit in a record with records after it is damage, not a
    /// crash: the open fails naming the file and the record's offset, and
    /// leaves the file as it was.
    #[test]
    fn a_damaged_record_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.wal");
        let (mut wal, _) = Wal::open(&path).unwrap();
        write(&mut wal, &rec(&[1], None));
        let second_at = wal.end;
        write(&mut wal, &big(2, 2000));
        write(&mut wal, &rec(&[3], None));
        drop(wal);
        let b = read_at(&path, second_at + 30, 1)[0];
        write_at(&path, second_at + 30, &[b ^ 1]);
        let before = std::fs::read(&path).unwrap();
        let e = Wal::open(&path).err().unwrap();
        assert!(
            matches!(&e, WalError::Damaged { offset, .. } if *offset == second_at),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("raft.wal") && msg.contains(&format!("byte {second_at}")),
            "{msg}"
        );
        assert!(msg.contains("checksum mismatch"), "{msg}");
        assert!(std::fs::read(&path).unwrap() == before, "file left alone");
    }

    /// The last record damaged with no zero sector in it was written whole,
    /// so it is not a torn write either.
    #[test]
    fn a_damaged_whole_last_record_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.wal");
        let (mut wal, _) = Wal::open(&path).unwrap();
        write(&mut wal, &rec(&[1], None));
        let last_at = wal.end;
        write(&mut wal, &big(2, 1500));
        drop(wal);
        let b = read_at(&path, last_at + 1000, 1)[0];
        write_at(&path, last_at + 1000, &[b ^ 0x10]);
        let e = Wal::open(&path).err().unwrap().to_string();
        assert!(e.contains(&format!("byte {last_at}")), "{e}");
    }

    /// A length read from disk is checked against the bytes left before the
    /// body is touched: a huge one is damage, not an allocation.
    #[test]
    fn a_length_past_the_end_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.wal");
        let (mut wal, _) = Wal::open(&path).unwrap();
        write(&mut wal, &rec(&[1], None));
        let at = wal.end;
        write(&mut wal, &rec(&[2], None));
        drop(wal);
        // A flipped length fails the header check.
        let b = read_at(&path, at + 1, 1)[0];
        write_at(&path, at + 1, &[b ^ 0x80]);
        let e = Wal::open(&path).err().unwrap().to_string();
        assert!(
            e.contains(&format!("byte {at}")) && e.contains("header check failed"),
            "{e}"
        );
        // A header that checks out with a length past the end.
        let header = |len: u32| {
            let mut h = len.to_le_bytes().to_vec();
            h.extend_from_slice(&[1, 2, 3, 4]);
            let check = crc32fast::hash(&h);
            h.extend_from_slice(&check.to_le_bytes());
            h.extend_from_slice(&[0; 4]);
            h
        };
        write_at(&path, at, &header(u32::MAX));
        let e = Wal::open(&path).err().unwrap().to_string();
        assert!(e.contains("length 4294967295 runs past"), "{e}");
        // A zero length is not the end marker either.
        write_at(&path, at, &header(0));
        let e = Wal::open(&path).err().unwrap().to_string();
        assert!(e.contains("zero length"), "{e}");
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
        // Larger than any journal this build writes: refused before it is
        // read into memory.
        let (wal, _) = Wal::open(&dir.path().join("other.wal")).unwrap();
        wal.file.set_len(CAPACITY + 1).unwrap();
        let e = Wal::open(&dir.path().join("other.wal"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("more than the"), "{e}");
    }

    /// After a failed write the journal refuses every later write (an
    /// fsync error may have dropped pages it reported written).
    #[test]
    fn a_failed_write_poisons_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.wal");
        drop(Wal::open(&path).unwrap());
        let mut wal = Wal {
            file: File::open(&path).unwrap(), // read-only: writes fail
            path: path.clone(),
            end: HEADER_LEN,
            poisoned: None,
        };
        let r = bytes(&rec(&[1], None));
        let e = wal.append(&r).unwrap_err();
        assert!(matches!(e, WalError::Io { .. }), "{e:?}");
        assert_eq!(wal.end, HEADER_LEN, "the offset did not move");
        // Even with a writable file now, nothing more is written.
        wal.file = OpenOptions::new().write(true).open(&path).unwrap();
        let e = wal.append(&r).unwrap_err().to_string();
        assert!(e.contains("an earlier write failed"), "{e}");
        assert!(wal.reset().is_err());
        let (_, got) = Wal::open(&path).unwrap();
        assert!(got.is_empty());
    }

    /// The records area as a journal leaves it: `records` written whole,
    /// then `partial` (a record being written when the crash came) with
    /// only the sectors in `written` (by index among the sectors it
    /// overlaps) on disk.
    fn crashed(records: &[WalRecord], partial: &WalRecord, written: &[bool]) -> Vec<u8> {
        let mut data = vec![0u8; 64 * 1024];
        let mut at = 0;
        for r in records {
            let b = bytes(r);
            data[at..at + b.len()].copy_from_slice(&b);
            at += b.len();
        }
        let b = bytes(partial);
        let header = HEADER_LEN as usize;
        for (i, byte) in b.iter().enumerate() {
            let sector = (at + i + header) / SECTOR - (at + header) / SECTOR;
            if written.get(sector).copied().unwrap_or(false) {
                data[at + i] = *byte;
            }
        }
        data
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// A crash at any point, losing any subset of the last record's
        /// sectors: the whole records come back, the torn one does not
        /// (unless all of it reached the disk), and it is never an error.
        #[test]
        fn any_torn_tail_is_dropped_without_error(
            sizes in proptest::collection::vec(1usize..1500, 0..8),
            last in 1usize..3000,
            written in proptest::collection::vec(any::<bool>(), 8),
        ) {
            let whole: Vec<WalRecord> = sizes.iter().enumerate()
                .map(|(i, n)| big(i as u64 + 1, *n)).collect();
            let partial = big(99, last);
            let data = crashed(&whole, &partial, &written);
            let (got, _) = decode_records(&data).expect("a torn tail is not damage");
            // The sectors the partial record overlaps: all written, it is
            // whole.
            let at: usize = whole.iter().map(|r| bytes(r).len()).sum::<usize>() + HEADER_LEN as usize;
            let n = bytes(&partial).len();
            let sectors = (at + n - 1) / SECTOR - at / SECTOR + 1;
            if written[..sectors].iter().all(|w| *w) {
                prop_assert_eq!(got.len(), whole.len() + 1);
            }
            if got.len() == whole.len() + 1 {
                prop_assert_eq!(&got[..whole.len()], &whole[..]);
                prop_assert_eq!(&got[whole.len()], &partial);
            } else {
                prop_assert_eq!(got, whole);
            }
        }

        /// A flipped bit in the length, checksum or body of any record but
        /// the last is an error naming that record.
        #[test]
        fn a_flip_before_the_last_record_is_an_error(
            sizes in proptest::collection::vec(1usize..1500, 2..6),
            which in any::<prop::sample::Index>(),
            pos in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let whole: Vec<WalRecord> = sizes.iter().enumerate()
                .map(|(i, n)| big(i as u64 + 1, *n)).collect();
            let mut data = crashed(&whole, &WalRecord::default(), &[]);
            let k = which.index(whole.len() - 1);
            let at: usize = whole[..k].iter().map(|r| bytes(r).len()).sum();
            let unpadded = RECORD_HEADER
                + u32::from_le_bytes(bytes(&whole[k])[..4].try_into().unwrap()) as usize;
            data[at + pos.index(unpadded)] ^= 1 << bit;
            let e = decode_records(&data).unwrap_err();
            prop_assert_eq!(e.at, at);
        }
    }
}
