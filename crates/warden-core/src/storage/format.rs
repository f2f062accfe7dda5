//! The byte formats of everything a member writes, in one place: the data
//! format version, the framing of Raft log records, and the framing of
//! snapshots (snapshot files, backups, and `StateMachine` snapshots).
//!
//! Owns: the version numbers and the one function that decides whether a
//! version can be read ([`check_version`]); every decoder in this crate and
//! in the server goes through it, so an unknown (future) version is refused
//! with an error naming the version found and the versions supported, and is
//! never misread as the current one.
//!
//! # Versions
//!
//! [`FORMAT_VERSION`] versions the *payloads*: the postcard encoding of the
//! Rust types that go into the log and into snapshots (`Command`, the Raft
//! entry, the vote, the state). Postcard writes an enum variant as its index
//! and a struct as its fields in order, so reordering a variant or a field
//! changes what old bytes mean: any such change must bump `FORMAT_VERSION`
//! and keep a decoder for the old version.
//!
//! - Version 1: the payload encoding of warden up to and including this
//!   build. Additions that old data never contains and old builds refuse
//!   rather than misread stay at version 1: variants appended after the
//!   existing ones (`Request::Alarm`, `CommandResult::Alarm`) and the alarm
//!   table a member snapshot body carries after the state only when it is
//!   not empty (`warden_server::node::state_machine`); likewise the lock
//!   commands proven by a handle digest (`Command::LockAcquireProven`,
//!   `LockReleaseProven`, `FencedProven`), the errors they add
//!   (`LockError::WrongHandle`, `HandleRequired`) and the section of handle
//!   digests snapshots carry last, only when some hold has one
//!   (`state::machine`). `state/lock_golden_tests.rs` pins the bytes of
//!   both the old lock commands and the new ones.
//! - "Format 0" is not a payload version but a log file layout: a Raft log
//!   written before records carried a version (no `format` table in the redb
//!   file). Its records are `[crc32][payload]` with version-1 payloads; see
//!   `log_db`, which upgrades such a file in place when it opens it.
//!
//! # Log record (a value in the redb `entries` and `meta` tables)
//!
//! | bytes | field                                                  |
//! |-------|--------------------------------------------------------|
//! | 1     | format version (`u8`, currently 1)                     |
//! | 4     | CRC32 (IEEE) of the version byte and the payload, LE   |
//! | n     | payload (postcard)                                     |
//!
//! The version byte comes first so that a build from before versioning,
//! which reads the first four bytes as the checksum, refuses these records
//! as corrupt instead of misreading them.
//!
//! # Snapshot frame (snapshot files, backups, `StateMachine` snapshots)
//!
//! | bytes | field                                                  |
//! |-------|--------------------------------------------------------|
//! | 8     | magic `b"WDNSNAPF"`                                    |
//! | 4     | format version (`u32` LE, currently 1)                 |
//! | 8     | meta length `m` (`u64` LE)                             |
//! | 8     | body length `n` (`u64` LE)                             |
//! | 4     | CRC32 (IEEE) of meta then body, LE                     |
//! | m     | meta (postcard; empty for a bare `StateMachine`)       |
//! | n     | body (postcard)                                        |
//!
//! This is byte for byte the snapshot-file layout of builds before this
//! module existed (whose header already carried version 1), so their files
//! load unchanged. A backup is this frame followed by etcd's outer layer
//! (zero padding to a multiple of 512 bytes and a SHA-256 trailer), added
//! and checked by `snapshot_file`.
//!
//! Must never: do IO, trust a length read from the input before checking it
//! against the input's actual size, or accept a version it does not list in
//! [`SUPPORTED_VERSIONS`].

use std::fmt;

/// The payload format version this build writes.
pub const FORMAT_VERSION: u32 = 1;

/// The payload format versions this build reads.
pub const SUPPORTED_VERSIONS: &[u32] = &[1];

// A log record stores the version in one byte.
const _: () = assert!(FORMAT_VERSION <= u8::MAX as u32);

/// Magic bytes opening every snapshot frame.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"WDNSNAPF";

/// Length of the snapshot frame header.
pub const SNAPSHOT_HEADER_LEN: usize = 8 + 4 + 8 + 8 + 4;

/// Length of a log record's header (version byte and checksum).
pub const RECORD_HEADER_LEN: usize = 1 + 4;

/// Why bytes could not be decoded. The caller adds which file, index or key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The bytes carry a format version this build cannot read.
    #[error("{what} has format version {found}, this build reads {supported}{}", hint(*.found))]
    UnsupportedVersion {
        what: &'static str,
        found: u32,
        supported: Versions,
    },
    /// Fewer bytes than the fixed header.
    #[error("truncated: {len} bytes, shorter than the {header}-byte header")]
    TooShort { len: usize, header: usize },
    /// A snapshot frame that does not start with [`SNAPSHOT_MAGIC`].
    #[error("not a warden snapshot (bad magic number {found:02x?})")]
    BadMagic { found: Vec<u8> },
    /// The header's lengths do not add up to the bytes present.
    #[error("truncated or padded: header promises {meta}+{body} bytes of content, found {actual}")]
    LengthMismatch { meta: u64, body: u64, actual: u64 },
    /// The stored checksum does not match the bytes.
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    ChecksumMismatch { stored: u32, computed: u32 },
    /// A snapshot frame whose meta section is longer than any this build
    /// writes ([`MAX_SNAPSHOT_META`]).
    #[error(
        "meta section of {meta} bytes, more than the {MAX_SNAPSHOT_META} a snapshot's meta \
         (its last log id and membership) can take"
    )]
    MetaTooLarge { meta: u64 },
}

/// The longest meta section a snapshot frame may have. The meta is a
/// snapshot's last log id, membership and id: a few hundred bytes per
/// member. Readers allocate it whole, so a frame claiming more (a damaged
/// file, a forged transfer) is refused before anything is allocated.
pub const MAX_SNAPSHOT_META: u64 = 16 * 1024 * 1024;

/// A list of versions, displayed as "version 1" or "versions 1, 2".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Versions(pub &'static [u32]);

impl fmt::Display for Versions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.len() == 1 {
            "version "
        } else {
            "versions "
        })?;
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

/// What to do about a version this build cannot read.
fn hint(found: u32) -> &'static str {
    let newest = SUPPORTED_VERSIONS.iter().max().copied().unwrap_or(0);
    if found > newest {
        "; it was written by a newer warden: run that version, or restore from a backup \
         this version can read"
    } else {
        " (not a version any warden wrote: the data is damaged)"
    }
}

/// The one place a format version is accepted or refused. `what` names the
/// thing carrying it ("log record", "snapshot") in the error.
pub fn check_version(what: &'static str, found: u32) -> Result<u32, FormatError> {
    if SUPPORTED_VERSIONS.contains(&found) {
        Ok(found)
    } else {
        Err(FormatError::UnsupportedVersion {
            what,
            found,
            supported: Versions(SUPPORTED_VERSIONS),
        })
    }
}

fn record_crc(version: u8, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[version]);
    h.update(payload);
    h.finalize()
}

/// Frames a log record payload at the current [`FORMAT_VERSION`].
pub fn encode_record(payload: &[u8]) -> Vec<u8> {
    // Fits: see the const assertion on FORMAT_VERSION.
    let version = FORMAT_VERSION as u8;
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + payload.len());
    out.push(version);
    out.extend_from_slice(&record_crc(version, payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Decodes a log record: checks its version (through [`check_version`]) and
/// its checksum, and returns the version and the payload.
pub fn decode_record(raw: &[u8]) -> Result<(u32, &[u8]), FormatError> {
    let Some((&version, rest)) = raw.split_first() else {
        return Err(FormatError::TooShort {
            len: 0,
            header: RECORD_HEADER_LEN,
        });
    };
    check_version("log record", u32::from(version))?;
    let (Some(crc), Some(payload)) = (rest.get(..4), rest.get(4..)) else {
        return Err(FormatError::TooShort {
            len: raw.len(),
            header: RECORD_HEADER_LEN,
        });
    };
    let stored = u32::from_le_bytes(array(crc));
    let computed = record_crc(version, payload);
    if stored != computed {
        return Err(FormatError::ChecksumMismatch { stored, computed });
    }
    Ok((u32::from(version), payload))
}

/// Decodes a record of a format-0 log (written before records carried a
/// version): `[crc32 of payload, LE][payload]`, payload at version 1.
pub fn decode_record_v0(raw: &[u8]) -> Result<&[u8], FormatError> {
    let (Some(crc), Some(payload)) = (raw.get(..4), raw.get(4..)) else {
        return Err(FormatError::TooShort {
            len: raw.len(),
            header: 4,
        });
    };
    let stored = u32::from_le_bytes(array(crc));
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(FormatError::ChecksumMismatch { stored, computed });
    }
    Ok(payload)
}

/// Frames a snapshot (meta and body) at the current [`FORMAT_VERSION`].
pub fn encode_snapshot(meta: &[u8], body: &[u8]) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(meta);
    crc.update(body);
    let header = encode_snapshot_header(meta.len() as u64, body.len() as u64, crc.finalize());
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_LEN + meta.len() + body.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(meta);
    out.extend_from_slice(body);
    out
}

/// The header of a snapshot frame at the current [`FORMAT_VERSION`] whose
/// meta and body are `meta_len` and `body_len` bytes long and have the
/// CRC32 `crc` (of meta then body). For writers that measure the sections
/// before streaming them; [`encode_snapshot`] is the in-memory equivalent.
pub fn encode_snapshot_header(meta_len: u64, body_len: u64, crc: u32) -> [u8; SNAPSHOT_HEADER_LEN] {
    let mut h = [0u8; SNAPSHOT_HEADER_LEN];
    h[..8].copy_from_slice(&SNAPSHOT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&meta_len.to_le_bytes());
    h[20..28].copy_from_slice(&body_len.to_le_bytes());
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The parsed fixed header of a snapshot frame.
pub(crate) struct SnapshotHeader {
    version: u32,
    pub(crate) meta_len: u64,
    pub(crate) body_len: u64,
    pub(crate) crc: u32,
}

/// The header a snapshot frame of `frame_len` bytes starts with, checked
/// against it as [`decode_snapshot`] checks a frame held in memory: the
/// format version, and lengths that add up to the frame's.
pub(crate) fn checked_snapshot_header(
    header: &[u8],
    frame_len: u64,
) -> Result<SnapshotHeader, FormatError> {
    let h = snapshot_header(header)?;
    check_version("snapshot", h.version)?;
    if h.meta_len > MAX_SNAPSHOT_META {
        return Err(FormatError::MetaTooLarge { meta: h.meta_len });
    }
    let actual = frame_len.saturating_sub(SNAPSHOT_HEADER_LEN as u64);
    let mismatch = || FormatError::LengthMismatch {
        meta: h.meta_len,
        body: h.body_len,
        actual,
    };
    let total = h.meta_len.checked_add(h.body_len).ok_or_else(mismatch)?;
    if total != actual {
        return Err(mismatch());
    }
    Ok(h)
}

fn snapshot_header(raw: &[u8]) -> Result<SnapshotHeader, FormatError> {
    let Some(h) = raw.get(..SNAPSHOT_HEADER_LEN) else {
        return Err(FormatError::TooShort {
            len: raw.len(),
            header: SNAPSHOT_HEADER_LEN,
        });
    };
    if h[..8] != SNAPSHOT_MAGIC {
        return Err(FormatError::BadMagic {
            found: h[..8].to_vec(),
        });
    }
    Ok(SnapshotHeader {
        version: u32::from_le_bytes(array(&h[8..12])),
        meta_len: u64::from_le_bytes(array(&h[12..20])),
        body_len: u64::from_le_bytes(array(&h[20..28])),
        crc: u32::from_le_bytes(array(&h[28..32])),
    })
}

/// The length of the frame `raw` starts with, as its header claims (an
/// untrusted number: callers clamp it to what they hold). `None` if `raw`
/// does not start with a snapshot header.
pub fn snapshot_claimed_len(raw: &[u8]) -> Option<u64> {
    let h = snapshot_header(raw).ok()?;
    (SNAPSHOT_HEADER_LEN as u64)
        .checked_add(h.meta_len)?
        .checked_add(h.body_len)
}

/// Decodes and verifies a snapshot frame that fills `raw` exactly; returns
/// (meta, body).
pub fn decode_snapshot(raw: &[u8]) -> Result<(&[u8], &[u8]), FormatError> {
    let h = snapshot_header(raw)?;
    check_version("snapshot", h.version)?;
    let content = &raw[SNAPSHOT_HEADER_LEN..];
    let mismatch = || FormatError::LengthMismatch {
        meta: h.meta_len,
        body: h.body_len,
        actual: content.len() as u64,
    };
    // Both lengths are checked against the bytes present before use.
    let total = h.meta_len.checked_add(h.body_len).ok_or_else(mismatch)?;
    if total != content.len() as u64 {
        return Err(mismatch());
    }
    let meta_len = usize::try_from(h.meta_len).map_err(|_| mismatch())?;
    let (meta, body) = content.split_at(meta_len);
    let mut crc = crc32fast::Hasher::new();
    crc.update(meta);
    crc.update(body);
    let computed = crc.finalize();
    if computed != h.crc {
        return Err(FormatError::ChecksumMismatch {
            stored: h.crc,
            computed,
        });
    }
    Ok((meta, body))
}

/// Copies a slice the caller has sized into an array (zero-filled if short).
fn array<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    for (dst, src) in a.iter_mut().zip(s) {
        *dst = *src;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_damage() {
        let r = encode_record(b"payload");
        assert_eq!(r[0], 1);
        assert_eq!(decode_record(&r), Ok((1, &b"payload"[..])));
        for i in 0..r.len() {
            let mut b = r.clone();
            b[i] ^= 0x04;
            assert!(decode_record(&b).is_err(), "flip at {i}");
        }
        for n in 0..RECORD_HEADER_LEN {
            assert!(matches!(
                decode_record(&r[..n]),
                Err(FormatError::TooShort { .. } | FormatError::UnsupportedVersion { .. })
            ));
        }
        assert_eq!(decode_record(&encode_record(b"")), Ok((1, &b""[..])));
    }

    #[test]
    fn future_versions_are_refused_by_name() {
        let mut r = encode_record(b"x");
        r[0] = 99;
        let e = decode_record(&r).unwrap_err().to_string();
        assert!(e.contains("format version 99"), "{e}");
        assert!(e.contains("reads version 1"), "{e}");
        assert!(e.contains("newer warden"), "{e}");
        r[0] = 0;
        let e = decode_record(&r).unwrap_err().to_string();
        assert!(
            e.contains("format version 0") && e.contains("damaged"),
            "{e}"
        );
        let mut s = encode_snapshot(b"m", b"b");
        s[8] = 99;
        let e = decode_snapshot(&s).unwrap_err().to_string();
        assert!(e.contains("snapshot has format version 99"), "{e}");
        assert_eq!(
            Versions(&[1, 2]).to_string(),
            "versions 1, 2",
            "plural form"
        );
    }

    #[test]
    fn snapshot_lengths_are_never_trusted() {
        let good = encode_snapshot(b"meta", b"body");
        assert_eq!(decode_snapshot(&good), Ok((&b"meta"[..], &b"body"[..])));
        assert_eq!(snapshot_claimed_len(&good), Some(good.len() as u64));
        // Huge claimed lengths: refused, nothing allocated.
        for (m, b) in [
            (u64::MAX, 0),
            (0, u64::MAX),
            (u64::MAX, u64::MAX),
            (1 << 40, 0),
        ] {
            let mut raw = good.clone();
            raw[12..20].copy_from_slice(&m.to_le_bytes());
            raw[20..28].copy_from_slice(&b.to_le_bytes());
            assert!(
                matches!(
                    decode_snapshot(&raw),
                    Err(FormatError::LengthMismatch { .. })
                ),
                "{m} {b}"
            );
        }
        assert_eq!(
            snapshot_claimed_len(&{
                let mut raw = good.clone();
                raw[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
                raw
            }),
            None
        );
    }

    #[test]
    fn a_file_header_claiming_a_huge_meta_is_refused_before_it_is_read() {
        // The lengths add up to the file's (a forged or damaged frame whose
        // checksum may even be right): the meta's length alone refuses it.
        for meta in [MAX_SNAPSHOT_META + 1, 1 << 30] {
            let h = encode_snapshot_header(meta, 10, 0);
            let frame_len = SNAPSHOT_HEADER_LEN as u64 + meta + 10;
            assert!(matches!(
                checked_snapshot_header(&h, frame_len),
                Err(FormatError::MetaTooLarge { meta: m }) if m == meta
            ));
        }
        let h = encode_snapshot_header(MAX_SNAPSHOT_META, 10, 0);
        let frame_len = SNAPSHOT_HEADER_LEN as u64 + MAX_SNAPSHOT_META + 10;
        assert!(checked_snapshot_header(&h, frame_len).is_ok());
    }

    #[test]
    fn format_0_records() {
        let mut raw = crc32fast::hash(b"old").to_le_bytes().to_vec();
        raw.extend_from_slice(b"old");
        assert_eq!(decode_record_v0(&raw), Ok(&b"old"[..]));
        raw[5] ^= 1;
        assert!(decode_record_v0(&raw).is_err());
        assert!(decode_record_v0(b"ab").is_err());
    }
}
