//! Snapshot files (`snap-<index>-<term>.snap` in the member's `snap/` dir)
//! and backups, as files.
//!
//! Owns: reading and writing those files atomically and durably, their
//! names, and the outer layer of backups (etcd's zero padding to 512 bytes
//! and SHA-256 trailer, which `etcdctl snapshot save` checks). The bytes
//! inside are one snapshot frame, whose layout and version rules belong to
//! [`super::format`]; a file whose frame has the wrong magic, version,
//! lengths or checksum is refused with an error naming the file, so a
//! corrupt, foreign or newer snapshot is never loaded. Files written before
//! the format module existed use the same frame (version 1) and load as is.
//!
//! A backup can also be streamed without holding it: [`Measure`] takes the
//! sections' length and CRC in a first pass (the header carries them before
//! the sections), [`BackupWriter`] writes header, sections, padding and
//! trailer to any sink in a second pass over the same sections.
//!
//! Files are written to a temporary name, fsynced, renamed, and the directory
//! fsynced, so a crash leaves either the old or the new snapshot.
//!
//! Must never: know what meta or body contain, or frame bytes itself.

use std::cell::Cell;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::format::{self, FormatError};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("snapshot {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot {path}: {source}")]
    Format {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error("snapshot {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl From<SnapshotFileError> for std::io::Error {
    fn from(e: SnapshotFileError) -> Self {
        std::io::Error::other(e)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotFileError + '_ {
    move |source| SnapshotFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// File name for a snapshot covering the log up to `index` in `term`; names
/// sort by index.
pub fn file_name(index: u64, term: u64) -> String {
    format!("snap-{index:020}-{term:020}.snap")
}

/// Encodes a whole snapshot file in memory (see [`format::encode_snapshot`]).
pub fn encode(meta: &[u8], body: &[u8]) -> Vec<u8> {
    format::encode_snapshot(meta, body)
}

/// Decodes and verifies a snapshot held in memory; `path` names it in errors.
pub fn decode(path: &Path, raw: &[u8]) -> Result<(Vec<u8>, Vec<u8>), SnapshotFileError> {
    let (meta, body) =
        format::decode_snapshot(raw).map_err(|source| SnapshotFileError::Format {
            path: path.to_path_buf(),
            source,
        })?;
    Ok((meta.to_vec(), body.to_vec()))
}

/// Backups (`Maintenance.Snapshot`) end like etcd's: content zero-padded to
/// a multiple of 512 bytes, then the SHA-256 of everything before it
/// (`etcdctl snapshot save` insists on that trailer).
pub fn seal_backup(mut raw: Vec<u8>) -> Vec<u8> {
    use sha2::Digest;
    let padded = raw.len().div_ceil(512) * 512;
    raw.resize(padded, 0);
    let sum = sha2::Sha256::digest(&raw);
    raw.extend_from_slice(&sum);
    raw
}

/// Length of the sealed backup of a frame of `frame_len` bytes: the frame
/// zero-padded to a multiple of 512 bytes, plus the 32-byte SHA-256 trailer
/// (what [`seal_backup`] makes of it).
pub fn backup_len(frame_len: u64) -> u64 {
    frame_len.div_ceil(512) * 512 + 32
}

/// Pass 1 of streaming a backup: a sink that keeps no bytes, only how many
/// went through it and their CRC32, which the frame header must carry
/// before the sections it covers.
#[derive(Default)]
pub struct Measure {
    len: u64,
    crc: crc32fast::Hasher,
}

impl Measure {
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// CRC32 of the bytes written so far.
    pub fn crc(&self) -> u32 {
        self.crc.clone().finalize()
    }
}

impl Write for Measure {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.len += buf.len() as u64;
        self.crc.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Pass 2 of streaming a backup: writes the sealed backup to `sink` while
/// the meta and body are written through it, given their lengths and CRC
/// from pass 1 (a [`Measure`]). The bytes are those of
/// `seal_backup(encode(meta, body))`, and nothing but the sink's own
/// buffering is held. The sections must be written again exactly as
/// measured: [`BackupWriter::finish`] refuses otherwise, and a write past
/// the measured length fails at once.
pub struct BackupWriter<W: Write> {
    sink: W,
    sha: sha2::Sha256,
    crc: crc32fast::Hasher,
    /// Section bytes written so far.
    written: u64,
    /// Section bytes (meta + body) announced in the header.
    content_len: u64,
    /// CRC announced in the header.
    content_crc: u32,
}

impl<W: Write> BackupWriter<W> {
    /// Writes the frame header to `sink` and returns the writer for the
    /// sections (meta first, then body).
    pub fn new(meta_len: u64, body_len: u64, crc: u32, sink: W) -> std::io::Result<Self> {
        let content_len = meta_len.checked_add(body_len).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("backup sections of {meta_len}+{body_len} bytes overflow"),
            )
        })?;
        let mut w = Self {
            sink,
            sha: sha2::Digest::new(),
            crc: crc32fast::Hasher::new(),
            written: 0,
            content_len,
            content_crc: crc,
        };
        let header = format::encode_snapshot_header(meta_len, body_len, crc);
        w.emit(&header)?;
        Ok(w)
    }

    /// The whole length of the sealed backup being written.
    pub fn total_len(&self) -> u64 {
        backup_len(format::SNAPSHOT_HEADER_LEN as u64 + self.content_len)
    }

    fn emit(&mut self, buf: &[u8]) -> std::io::Result<()> {
        sha2::Digest::update(&mut self.sha, buf);
        self.sink.write_all(buf)
    }

    /// Checks the sections were all written as measured, writes the zero
    /// padding and the SHA-256 trailer, flushes and returns the sink.
    pub fn finish(mut self) -> std::io::Result<W> {
        let crc = self.crc.clone().finalize();
        if self.written != self.content_len || crc != self.content_crc {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "backup sections changed between measuring and writing: measured {} bytes \
                     with CRC {:08x}, wrote {} with CRC {crc:08x}",
                    self.content_len, self.content_crc, self.written
                ),
            ));
        }
        let frame_len = format::SNAPSHOT_HEADER_LEN as u64 + self.content_len;
        let mut pad = backup_len(frame_len) - 32 - frame_len;
        let zeros = [0u8; 512];
        while pad > 0 {
            let n = pad.min(zeros.len() as u64) as usize;
            self.emit(&zeros[..n])?;
            pad -= n as u64;
        }
        let sum = sha2::Digest::finalize(self.sha.clone());
        self.sink.write_all(&sum)?;
        self.sink.flush()?;
        Ok(self.sink)
    }
}

impl<W: Write> Write for BackupWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let after = self.written + buf.len() as u64;
        if after > self.content_len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "backup sections grew between measuring and writing: more than the {} bytes \
                     measured",
                    self.content_len
                ),
            ));
        }
        self.emit(buf)?;
        self.crc.update(buf);
        self.written = after;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sink.flush()
    }
}

/// Reads a backup: a snapshot file, with or without the sealed trailer
/// (whose hash must then match).
pub fn read_backup(path: &Path) -> Result<(Vec<u8>, Vec<u8>), SnapshotFileError> {
    use sha2::Digest;
    let mut raw = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut raw))
        .map_err(io_err(path))?;
    let sealed = raw.len() >= format::SNAPSHOT_HEADER_LEN + 32 && (raw.len() - 32) % 512 == 0;
    if !sealed {
        return decode(path, &raw);
    }
    let (content, sum) = raw.split_at(raw.len() - 32);
    if sha2::Sha256::digest(content).as_slice() != sum {
        return Err(SnapshotFileError::Invalid {
            path: path.to_path_buf(),
            reason: "SHA-256 trailer does not match the content (damaged or truncated)".into(),
        });
    }
    // The header says how long the snapshot is (clamped to what is there);
    // the rest must be padding.
    let end = format::snapshot_claimed_len(content)
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
        .min(content.len());
    if content[end..].iter().any(|b| *b != 0) {
        return Err(SnapshotFileError::Invalid {
            path: path.to_path_buf(),
            reason: "unexpected bytes after the snapshot".into(),
        });
    }
    decode(path, &content[..end])
}

/// Reads and verifies a snapshot file. The body comes back in the buffer
/// the file was read into (the frame ends with it), so what this holds at
/// most is the file once, not the file and a copy of its body.
pub fn read(path: &Path) -> Result<(Vec<u8>, Vec<u8>), SnapshotFileError> {
    let mut raw = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut raw))
        .map_err(io_err(path))?;
    let (meta, body_len) = {
        let (meta, body) =
            format::decode_snapshot(&raw).map_err(|source| SnapshotFileError::Format {
                path: path.to_path_buf(),
                source,
            })?;
        (meta.to_vec(), body.len())
    };
    // decode_snapshot checked that header, meta and body are all the bytes.
    raw.drain(..raw.len().saturating_sub(body_len));
    Ok((meta, raw))
}

/// A snapshot file decoded as it is read, without the whole file in
/// memory: loading a large state then holds the decoded state and a read
/// buffer, not the file's bytes as well (the peak of a restart). The frame
/// (header, lengths, CRC) is verified by a first pass over the file before
/// anything is decoded, so damaged bytes are refused as [`read`] refuses
/// them, before they can be decoded into anything: for a file nothing
/// writes to while it is read, as snapshot files are (renamed into place
/// once written and synced, never written again).
pub struct SnapshotStream {
    path: PathBuf,
    meta: Vec<u8>,
    de: postcard::Deserializer<'static, BodyFlavor>,
    /// Where the decoder notes a failed read (postcard's errors cannot
    /// carry it).
    io_error: Rc<Cell<Option<std::io::Error>>>,
}

/// Bytes read from the file at a time.
pub const STREAM_BUFFER: usize = 256 * 1024;

impl SnapshotStream {
    /// Opens and verifies `path`; the body is then read by [`Self::take`]
    /// and [`Self::rest`].
    pub fn open(path: &Path) -> Result<SnapshotStream, SnapshotFileError> {
        let format_err = |source| SnapshotFileError::Format {
            path: path.to_path_buf(),
            source,
        };
        let mut file = fs::File::open(path).map_err(io_err(path))?;
        let frame_len = file.metadata().map_err(io_err(path))?.len();
        let mut header = Vec::with_capacity(format::SNAPSHOT_HEADER_LEN);
        (&mut file)
            .take(format::SNAPSHOT_HEADER_LEN as u64)
            .read_to_end(&mut header)
            .map_err(io_err(path))?;
        let h = format::checked_snapshot_header(&header, frame_len).map_err(format_err)?;
        // First pass: the checksum over meta and body.
        let mut crc = crc32fast::Hasher::new();
        let mut buf = vec![0u8; STREAM_BUFFER];
        loop {
            let n = file.read(&mut buf).map_err(io_err(path))?;
            if n == 0 {
                break;
            }
            crc.update(buf.get(..n).unwrap_or_default());
        }
        let computed = crc.finalize();
        if computed != h.crc {
            return Err(format_err(FormatError::ChecksumMismatch {
                stored: h.crc,
                computed,
            }));
        }
        // Second pass: the meta, then the body through the decoder.
        let invalid = |reason: &str| SnapshotFileError::Invalid {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(format::SNAPSHOT_HEADER_LEN as u64))
            .map_err(io_err(path))?;
        let meta_len = usize::try_from(h.meta_len).map_err(|_| invalid("meta too large"))?;
        let mut meta = vec![0u8; meta_len];
        file.read_exact(&mut meta).map_err(io_err(path))?;
        let body = std::io::BufReader::with_capacity(STREAM_BUFFER, file.take(h.body_len));
        let io_error = Rc::new(Cell::new(None));
        Ok(SnapshotStream {
            path: path.to_path_buf(),
            meta,
            de: postcard::Deserializer::from_flavor(BodyFlavor {
                body,
                temp: Vec::new(),
                error: io_error.clone(),
            }),
            io_error,
        })
    }

    /// The frame's meta section.
    pub fn meta(&self) -> &[u8] {
        &self.meta
    }

    /// Decodes the next postcard value of the body.
    pub fn take<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, SnapshotFileError> {
        T::deserialize(&mut self.de).map_err(|e| {
            let reason = match self.io_error.take() {
                Some(io) => format!("reading the body: {io}"),
                None => format!("bad body: {e}"),
            };
            SnapshotFileError::Invalid {
                path: self.path.clone(),
                reason,
            }
        })
    }

    /// The body bytes [`Self::take`] has not decoded.
    pub fn rest(self) -> Result<Vec<u8>, SnapshotFileError> {
        let path = self.path;
        let mut flavor = match self.de.finalize() {
            Ok(f) => f,
            Err(e) => {
                return Err(SnapshotFileError::Invalid {
                    path,
                    reason: format!("bad body: {e}"),
                })
            }
        };
        let mut rest = Vec::new();
        flavor.body.read_to_end(&mut rest).map_err(io_err(&path))?;
        Ok(rest)
    }
}

/// postcard's view of a snapshot body being read: bytes come from the
/// file through a buffer; a byte string is read into a scratch buffer no
/// longer than what is left of the body (a damaged length cannot make it
/// allocate more than the file holds).
struct BodyFlavor {
    body: std::io::BufReader<std::io::Take<fs::File>>,
    temp: Vec<u8>,
    error: Rc<Cell<Option<std::io::Error>>>,
}

impl BodyFlavor {
    fn left(&self) -> u64 {
        (self.body.buffer().len() as u64).saturating_add(self.body.get_ref().limit())
    }

    fn io(&mut self, e: std::io::Error) -> postcard::Error {
        self.error.set(Some(e));
        postcard::Error::DeserializeUnexpectedEnd
    }
}

impl postcard::de_flavors::Flavor<'static> for BodyFlavor {
    type Remainder = BodyFlavor;
    type Source = fs::File;

    fn pop(&mut self) -> postcard::Result<u8> {
        use std::io::BufRead;
        let byte = match self.body.fill_buf() {
            Ok(b) => b.first().copied(),
            Err(e) => return Err(self.io(e)),
        };
        match byte {
            Some(b) => {
                self.body.consume(1);
                Ok(b)
            }
            None => Err(postcard::Error::DeserializeUnexpectedEnd),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        usize::try_from(self.left()).ok()
    }

    fn try_take_n(&mut self, _ct: usize) -> postcard::Result<&'static [u8]> {
        // Nothing in a snapshot borrows from the input; a type that did
        // would fail every load, so say why rather than "end of buffer".
        Err(self.io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a value borrows from the input, which a snapshot read from a file cannot lend \
             (a decoding bug)",
        )))
    }

    fn try_take_n_temp<'a>(&'a mut self, ct: usize) -> postcard::Result<&'a [u8]>
    where
        'static: 'a,
    {
        if ct as u64 > self.left() {
            return Err(postcard::Error::DeserializeUnexpectedEnd);
        }
        self.temp.clear();
        self.temp.resize(ct, 0);
        if let Err(e) = self.body.read_exact(&mut self.temp) {
            return Err(self.io(e));
        }
        Ok(&self.temp)
    }

    fn finalize(self) -> postcard::Result<BodyFlavor> {
        Ok(self)
    }
}

/// Writes bytes to `dir/name` atomically and durably.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, SnapshotFileError> {
    atomically(dir, name, |f| f.write_all(bytes))
}

/// Creates `dir/name.tmp`, lets `fill` write it, fsyncs it, renames it to
/// `dir/name` and fsyncs the directory: the file is either whole or absent.
fn atomically(
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> Result<PathBuf, SnapshotFileError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    {
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        fill(&mut f).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(path)
}

/// Writes a snapshot frame to `dir/name` atomically and durably, streaming
/// its sections: `sections` writes the meta and then the body into the
/// writer it is given, and returns the length of the meta. What this holds
/// is a write buffer, whatever the size of the state: the header, which
/// carries both lengths and the CRC before the sections, is written last,
/// over a placeholder. The file has the bytes [`encode`] would make.
pub fn write_frame_atomic(
    dir: &Path,
    name: &str,
    sections: impl FnOnce(&mut dyn Write) -> std::io::Result<u64>,
) -> Result<PathBuf, SnapshotFileError> {
    use std::io::{Seek, SeekFrom};
    atomically(dir, name, |f| {
        f.write_all(&[0u8; format::SNAPSHOT_HEADER_LEN])?;
        // The buffer before the measure: the encoder writes a few bytes
        // at a time, and a CRC update per write cost more than the rest
        // of the snapshot (docs/benchmarks.md, "Snapshots that do not
        // stall writes").
        let mut out = std::io::BufWriter::with_capacity(
            1 << 20,
            Tee {
                out: SyncEvery {
                    file: &mut *f,
                    every: SYNC_EVERY,
                    unsynced: 0,
                },
                seen: Measure::default(),
            },
        );
        let meta_len = sections(&mut out)?;
        let Tee { out, seen } = out.into_inner().map_err(|e| e.into_error())?;
        let f = out.file;
        let body_len = seen.len().checked_sub(meta_len).ok_or_else(|| {
            std::io::Error::other(format!(
                "meta length {meta_len} is more than the {} bytes written",
                seen.len()
            ))
        })?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&format::encode_snapshot_header(
            meta_len,
            body_len,
            seen.crc(),
        ))
    })
}

/// Bytes of a snapshot written between two `fdatasync`s of it. Written
/// whole and synced once at the end, a snapshot of a large state (tens of
/// megabytes) queued all of it on the disk at once, and the log's own
/// `fdatasync`s, which every write waits for, queued behind it
/// (docs/benchmarks.md, "Snapshots that do not stall writes").
pub const SYNC_EVERY: u64 = 4 << 20;

/// Writes to a file and syncs its data every `every` bytes.
struct SyncEvery<'a> {
    file: &'a mut fs::File,
    every: u64,
    unsynced: u64,
}

impl Write for SyncEvery<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Sync before a write, not after: a write that succeeded is never
        // reported failed (and then written again by a retry).
        if self.unsynced >= self.every {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        let n = self.file.write(buf)?;
        self.unsynced += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Writes through to `out` and measures what went through.
struct Tee<W: Write> {
    out: W,
    seen: Measure,
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.seen.write_all(&buf[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// The newest snapshot file in `dir`, if any.
pub fn newest(dir: &Path) -> Result<Option<PathBuf>, SnapshotFileError> {
    Ok(list(dir)?.pop())
}

fn list(dir: &Path) -> Result<Vec<PathBuf>, SnapshotFileError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(io_err(dir))?;
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap-") && name.ends_with(".snap") {
            out.push(ent.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Removes every snapshot file in `dir` except `keep`. Temp files are left
/// alone: one may be a snapshot being received or written right now (see
/// [`remove_stale_temp_files`]).
pub fn remove_others(dir: &Path, keep: &Path) -> Result<(), SnapshotFileError> {
    for p in list(dir)? {
        if p != keep {
            fs::remove_file(&p).map_err(io_err(&p))?;
        }
    }
    Ok(())
}

/// Removes the `*.tmp` files a crash left in `dir`. Call only at start,
/// before anything can be writing a snapshot there.
pub fn remove_stale_temp_files(dir: &Path) -> Result<(), SnapshotFileError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for ent in rd.flatten() {
        if ent.file_name().to_string_lossy().ends_with(".tmp") {
            let p = ent.path();
            fs::remove_file(&p).map_err(io_err(&p))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_synced_every_few_bytes_come_out_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = fs::File::create(&path).unwrap();
        let mut w = SyncEvery {
            file: &mut file,
            every: 4,
            unsynced: 0,
        };
        let mut want = Vec::new();
        for i in 0..10u8 {
            let piece = [i, i + 1, i + 2];
            w.write_all(&piece).unwrap();
            want.extend_from_slice(&piece);
            // Never more than one write past the sync point.
            assert!(w.unsynced < 4 + 3, "{}", w.unsynced);
        }
        w.flush().unwrap();
        assert_eq!(fs::read(&path).unwrap(), want);
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        name: String,
        #[serde(with = "serde_bytes")]
        blob: Vec<u8>,
        list: Vec<(u64, Option<String>)>,
    }

    fn sample(blob_len: usize) -> Sample {
        Sample {
            name: "the state".into(),
            blob: (0..blob_len).map(|i| (i % 253) as u8).collect(),
            list: (0..1000u64)
                .map(|i| (i * 7919, (i % 3 == 0).then(|| format!("item {i}"))))
                .collect(),
        }
    }

    /// What `SnapshotStream` decodes is what was encoded, in order, with
    /// the undecoded tail of the body left over, whatever the size of the
    /// byte strings against its read buffer.
    #[test]
    fn a_stream_decodes_what_was_encoded() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (sample(3 * STREAM_BUFFER + 17), sample(0));
        let mut body = postcard::to_stdvec(&a).unwrap();
        body.extend(postcard::to_stdvec(&b).unwrap());
        body.extend_from_slice(b"tail");
        let path = write_atomic(dir.path(), "s.snap", &encode(b"meta", &body)).unwrap();
        let mut s = SnapshotStream::open(&path).unwrap();
        assert_eq!(s.meta(), b"meta");
        assert_eq!(s.take::<Sample>().unwrap(), a);
        assert_eq!(s.take::<Sample>().unwrap(), b);
        assert_eq!(s.rest().unwrap(), b"tail");
    }

    /// Damage is refused before anything is decoded, as `read` refuses it:
    /// any flipped byte, a truncated or extended file, a short header.
    #[test]
    fn a_stream_refuses_a_damaged_file() {
        let dir = tempfile::tempdir().unwrap();
        let frame = encode(b"m", &postcard::to_stdvec(&sample(100)).unwrap());
        let open_bytes = |bytes: &[u8]| {
            let path = write_atomic(dir.path(), "d.snap", bytes).unwrap();
            SnapshotStream::open(&path).map(|_| ())
        };
        assert!(open_bytes(&frame).is_ok());
        for i in (0..frame.len()).step_by(7) {
            let mut b = frame.clone();
            b[i] ^= 0x10;
            let e = open_bytes(&b).unwrap_err();
            assert!(
                matches!(e, SnapshotFileError::Format { .. }),
                "flip at {i}: {e}"
            );
        }
        let e = open_bytes(&frame[..frame.len() - 1]).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let mut longer = frame.clone();
        longer.push(0);
        assert!(open_bytes(&longer).is_err());
        assert!(open_bytes(&frame[..10]).is_err());
    }

    /// A body whose lengths lie (well framed, so the checksum holds) fails
    /// to decode without allocating what the lie claims.
    #[test]
    fn a_lying_length_in_a_stream_fails_without_allocating_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut body = postcard::to_stdvec(&"the state").unwrap();
        // A byte string claiming 2^50 bytes, then 3 bytes.
        body.extend(postcard::to_stdvec(&(1u64 << 50)).unwrap());
        body.extend_from_slice(b"abc");
        let path = write_atomic(dir.path(), "l.snap", &encode(b"", &body)).unwrap();
        let mut s = SnapshotStream::open(&path).unwrap();
        assert_eq!(s.take::<String>().unwrap(), "the state");
        let e = s.take::<serde_bytes::ByteBuf>().unwrap_err();
        assert!(e.to_string().contains("bad body"), "{e}");
        // And a body that ends inside a value.
        let body = postcard::to_stdvec(&sample(1000)).unwrap();
        let path = write_atomic(dir.path(), "t.snap", &encode(b"", &body[..500])).unwrap();
        let e = SnapshotStream::open(&path)
            .unwrap()
            .take::<Sample>()
            .unwrap_err();
        assert!(e.to_string().contains("bad body"), "{e}");
    }

    #[test]
    fn a_streamed_frame_has_the_bytes_of_encode() {
        let dir = tempfile::tempdir().unwrap();
        let meta = b"meta bytes".to_vec();
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let path = write_frame_atomic(dir.path(), "snap-x.snap", |w| {
            w.write_all(&meta)?;
            for piece in body.chunks(4099) {
                w.write_all(piece)?;
            }
            Ok(meta.len() as u64)
        })
        .unwrap();
        assert_eq!(fs::read(&path).unwrap(), encode(&meta, &body));
        assert_eq!(read(&path).unwrap(), (meta.clone(), body));
        assert!(!dir.path().join("snap-x.snap.tmp").exists());
        // A meta length beyond what was written is refused, nothing renamed.
        let err = write_frame_atomic(dir.path(), "snap-y.snap", |w| {
            w.write_all(b"ab")?;
            Ok(3)
        })
        .unwrap_err();
        assert!(err.to_string().contains("meta length 3"), "{err}");
        assert!(!dir.path().join("snap-y.snap").exists());
    }

    /// Streams meta and body through a `Measure`, then a `BackupWriter`.
    fn streamed(meta: &[u8], body: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut m = Measure::default();
        m.write_all(meta)?;
        let meta_len = m.len();
        m.write_all(body)?;
        let mut w = BackupWriter::new(meta_len, m.len() - meta_len, m.crc(), Vec::new())?;
        // In odd pieces, as an encoder writes.
        for piece in meta.chunks(3).chain(body.chunks(7)) {
            w.write_all(piece)?;
        }
        let total = w.total_len();
        let out = w.finish()?;
        assert_eq!(out.len() as u64, total);
        Ok(out)
    }

    #[test]
    fn streamed_backups_are_the_sealed_bytes() {
        // Frame lengths around the 512-byte padding boundary included.
        for body_len in [0usize, 1, 100, 480 - 4, 480 - 3, 480 - 2, 1000, 5000] {
            let body: Vec<u8> = (0..body_len).map(|i| (i * 7 % 251) as u8).collect();
            let want = seal_backup(encode(b"meta", &body));
            assert_eq!(streamed(b"meta", &body).unwrap(), want, "body {body_len}");
            assert_eq!(
                backup_len((format::SNAPSHOT_HEADER_LEN + 4 + body_len) as u64),
                want.len() as u64
            );
        }
    }

    #[test]
    fn streamed_sections_must_match_the_measure() {
        let mut m = Measure::default();
        m.write_all(b"mb").unwrap();
        // Same length, different bytes.
        let mut w = BackupWriter::new(1, 1, m.crc(), Vec::new()).unwrap();
        w.write_all(b"mc").unwrap();
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("changed between measuring and writing"), "{e}");
        // Shorter.
        let mut w = BackupWriter::new(1, 1, m.crc(), Vec::new()).unwrap();
        w.write_all(b"m").unwrap();
        assert!(w.finish().is_err());
        // Longer: refused at the write.
        let mut w = BackupWriter::new(1, 1, m.crc(), Vec::new()).unwrap();
        let e = w.write_all(b"mbx").unwrap_err().to_string();
        assert!(e.contains("grew"), "{e}");
    }

    #[test]
    fn sealed_backups_verify_their_trailer() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = seal_backup(encode(b"meta", b"the body"));
        assert_eq!((sealed.len() - 32) % 512, 0, "etcdctl's size rule");
        let p = dir.path().join("b.snap");
        fs::write(&p, &sealed).unwrap();
        assert_eq!(
            read_backup(&p).unwrap(),
            (b"meta".to_vec(), b"the body".to_vec())
        );
        // A plain snapshot file is a backup too.
        fs::write(&p, encode(b"m", b"b")).unwrap();
        assert_eq!(read_backup(&p).unwrap(), (b"m".to_vec(), b"b".to_vec()));
        // One flipped byte anywhere is caught.
        for at in [3, 40, sealed.len() - 40, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 0x40;
            fs::write(&p, &bad).unwrap();
            assert!(read_backup(&p).is_err(), "flip at {at}");
        }
        // Truncated.
        fs::write(&p, &sealed[..sealed.len() - 100]).unwrap();
        assert!(read_backup(&p).is_err());
    }

    #[test]
    fn round_trip_and_newest() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_atomic(dir.path(), &file_name(5, 1), &encode(b"m5", b"body5")).unwrap();
        let b = write_atomic(dir.path(), &file_name(12, 2), &encode(b"m12", b"body12")).unwrap();
        assert_eq!(newest(dir.path()).unwrap(), Some(b.clone()));
        assert_eq!(read(&a).unwrap(), (b"m5".to_vec(), b"body5".to_vec()));
        let receiving = dir.path().join("recv-0000000000000001.tmp");
        fs::write(&receiving, b"half a snapshot").unwrap();
        remove_others(dir.path(), &b).unwrap();
        assert!(!a.exists());
        assert!(
            receiving.exists(),
            "a snapshot being received is not touched"
        );
        assert_eq!(read(&b).unwrap(), (b"m12".to_vec(), b"body12".to_vec()));
        remove_stale_temp_files(dir.path()).unwrap();
        assert!(
            !receiving.exists(),
            "left over from a crash: removed at start"
        );
        assert!(b.exists());
    }

    #[test]
    fn damaged_files_are_refused() {
        let p = Path::new("x.snap");
        let good = encode(b"meta", b"the body of the snapshot");
        for cut in [0, 10, format::SNAPSHOT_HEADER_LEN, good.len() - 1] {
            let e = decode(p, &good[..cut]).unwrap_err().to_string();
            assert!(e.contains("truncated"), "cut {cut}: {e}");
        }
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(decode(p, &flipped)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        let mut foreign = good.clone();
        foreign[0] = b'X';
        assert!(decode(p, &foreign)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let mut newer = good.clone();
        newer[8] = 9;
        assert!(decode(p, &newer)
            .unwrap_err()
            .to_string()
            .contains("version 9"));
        assert!(decode(p, &good).is_ok());
    }
}
