//! Fuzz tests of every decoder in this crate that reads bytes from disk or
//! from a peer (docs/testing.md, "Fuzzing"): random bytes, and valid
//! encodings truncated, bit-flipped, with bytes inserted, deleted or
//! duplicated and with huge varint lengths spliced in. A framed format is
//! re-framed after the edit (fresh checksum) so the decoder inside the frame
//! is reached, not just the checksum. Every decoder must return an error or
//! a value that round-trips and is safe to use; none may panic or allocate
//! more than [`allocation_bound`] of its input.
//!
//! Bounded for `cargo test`; `PROPTEST_CASES=100000` runs more.

use proptest::prelude::*;
use proptest::sample::select;

use crate::state::alarm::{AlarmAction, AlarmTable, AlarmType};
use crate::state::lock_table::{AcquireRequest, HandleDigest, LockMode};
use crate::state::types::*;
use crate::state::{Applied, Command, StateMachine, MAX_NESTING};
use crate::storage::format::{self, SNAPSHOT_HEADER_LEN};
use crate::storage::snapshot_file;
use crate::testing::{allocation_bound, cases, largest_allocation, mutate, varint, HUGE};

/// Up to four edits.
fn edits() -> impl Strategy<Value = Vec<(u8, usize, u64)>> {
    prop::collection::vec((any::<u8>(), any::<usize>(), any::<u64>()), 1..5)
}

/// Random bytes, or one of `valid` edited.
fn hostile(valid: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        4 => (select(valid), edits()).prop_map(|(v, e)| mutate(&v, &e)),
    ]
}

fn put(key: &[u8], value: &[u8], lease: i64) -> Command {
    Command::Put(PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        lease,
        prev_kv: true,
        ignore_value: false,
        ignore_lease: false,
    })
}

/// One command of every variant, nested ones included.
fn commands() -> Vec<Command> {
    let txn = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Greater,
            target: CompareTarget::ModRevision(2),
            key: b"a".to_vec(),
            range_end: b"\x00".to_vec(),
        }],
        success: vec![
            RequestOp::Range(RangeRequest {
                key: b"a".to_vec(),
                range_end: b"z".to_vec(),
                limit: 2,
                sort_order: SortOrder::Descend,
                sort_target: SortTarget::Value,
                ..RangeRequest::default()
            }),
            RequestOp::Txn(TxnRequest {
                compare: Vec::new(),
                success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                    key: b"b".to_vec(),
                    range_end: Vec::new(),
                    prev_kv: true,
                })],
                failure: Vec::new(),
            }),
        ],
        failure: vec![RequestOp::Put(PutRequest {
            key: b"c".to_vec(),
            value: b"v".to_vec(),
            ..PutRequest::default()
        })],
    };
    vec![
        put(b"key", b"value", 0),
        Command::DeleteRange(DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: b"\x00".to_vec(),
            prev_kv: false,
        }),
        Command::Txn(txn.clone()),
        Command::Compact(CompactionRequest {
            revision: 3,
            physical: true,
        }),
        Command::LeaseGrant { id: 7, ttl: 60 },
        Command::LeaseRevoke { id: 7 },
        Command::LeaseCheckpoint {
            checkpoints: vec![(7, 30, 1000), (8, 1, 2)],
        },
        Command::LockAcquire(AcquireRequest {
            name: "l".into(),
            mode: LockMode::Shared,
            lease: 7,
            priority: -3,
            owner: "me".into(),
            wait: true,
        }),
        Command::LockRelease {
            name: "l".into(),
            token: 1,
        },
        Command::LockCancel {
            name: "l".into(),
            waiter_id: 2,
        },
        Command::Fenced {
            name: "l".into(),
            token: 1,
            command: Box::new(Command::Txn(txn.clone())),
        },
        Command::LockAcquireProven {
            req: AcquireRequest {
                name: "l".into(),
                mode: LockMode::Exclusive,
                lease: 7,
                priority: 1,
                owner: "proven".into(),
                wait: true,
            },
            proof: HandleDigest::of_handle(b"one"),
        },
        Command::LockReleaseProven {
            name: "l".into(),
            token: 1,
            proof: HandleDigest::of_handle(b"one"),
        },
        Command::FencedProven {
            name: "l".into(),
            token: 1,
            proof: HandleDigest::of_handle(b"one"),
            command: Box::new(Command::Txn(txn)),
        },
    ]
}

/// A state with something in every table: keys with history, a compaction,
/// leases with keys, a held lock with a queued waiter.
fn rich_state() -> StateMachine {
    let mut m = StateMachine::new();
    for cmd in [
        put(b"a", b"1", 0),
        put(b"a", b"2", 0),
        put(b"b", b"x", 0),
        Command::LeaseGrant { id: 7, ttl: 60 },
        Command::LeaseGrant { id: 8, ttl: 5 },
        put(b"leased", b"y", 7),
        Command::Compact(CompactionRequest {
            revision: 2,
            physical: false,
        }),
        Command::LockAcquire(AcquireRequest {
            name: "l".into(),
            mode: LockMode::Exclusive,
            lease: 7,
            priority: 0,
            owner: "first".into(),
            wait: false,
        }),
        Command::LockAcquire(AcquireRequest {
            name: "l".into(),
            mode: LockMode::Shared,
            lease: 8,
            priority: 2,
            owner: "second".into(),
            wait: true,
        }),
        // Holds and waits with handle digests: the snapshot's last section.
        Command::LockAcquireProven {
            req: AcquireRequest {
                name: "m".into(),
                mode: LockMode::Exclusive,
                lease: 8,
                priority: 0,
                owner: "third".into(),
                wait: true,
            },
            proof: HandleDigest::of_handle(b"third"),
        },
        Command::LockAcquireProven {
            req: AcquireRequest {
                name: "m".into(),
                mode: LockMode::Exclusive,
                lease: 7,
                priority: 0,
                owner: "fourth".into(),
                wait: true,
            },
            proof: HandleDigest::of_handle(b"fourth"),
        },
        Command::LeaseCheckpoint {
            checkpoints: vec![(7, 30_000, 1)],
        },
        Command::DeleteRange(DeleteRangeRequest {
            key: b"b".to_vec(),
            range_end: Vec::new(),
            prev_kv: false,
        }),
    ] {
        m.apply(&cmd);
    }
    m
}

/// Uses a state that was accepted: reads, writes, compaction, lease and
/// lock changes must work on it (not panic) and keep it consistent.
fn exercise(mut m: StateMachine) -> Result<(), TestCaseError> {
    let all = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..RangeRequest::default()
    };
    let _ = m.range(&all);
    for rev in [0, 1, m.compact_revision(), m.revision()] {
        let _ = m.range(&RangeRequest {
            revision: rev,
            ..all.clone()
        });
        let _ = m.hash_kv(rev);
    }
    let _ = m.size();
    let mut cmds = commands();
    cmds.push(Command::Compact(CompactionRequest {
        revision: m.revision(),
        physical: false,
    }));
    for l in m.leases().iter().map(|l| l.id).collect::<Vec<_>>() {
        cmds.push(Command::LeaseRevoke { id: l });
    }
    for cmd in &cmds {
        m.apply(cmd);
    }
    prop_assert_eq!(m.check_invariants(), Ok(()));
    Ok(())
}

/// Asserts the largest allocation `f` made is within the bound for
/// `input_len` bytes, and returns its result.
fn bounded<T>(input_len: usize, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let (out, largest) = largest_allocation(f);
    prop_assert!(
        largest <= allocation_bound(input_len),
        "decoding {} bytes allocated {} bytes at once",
        input_len,
        largest
    );
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1024), ..ProptestConfig::default() })]

    /// Log records (`log_db`): current and format-0 framing.
    #[test]
    fn log_records(raw in hostile(vec![
        format::encode_record(b""),
        format::encode_record(&postcard::to_stdvec(&commands()[2]).unwrap()),
        crc32fast::hash(b"old payload").to_le_bytes().iter().chain(b"old payload").copied().collect(),
    ])) {
        if let Ok((version, payload)) = bounded(raw.len(), || format::decode_record(&raw))? {
            prop_assert_eq!(version, format::FORMAT_VERSION);
            prop_assert_eq!(format::encode_record(payload), raw.clone());
        }
        if let Ok(payload) = format::decode_record_v0(&raw) {
            prop_assert_eq!(&crc32fast::hash(payload).to_le_bytes()[..], &raw[..4]);
        }
    }

    /// Snapshot frames (`format`, `snapshot_file::decode`), header lengths
    /// included.
    #[test]
    fn snapshot_frames(
        raw in hostile(vec![
            format::encode_snapshot(b"", b""),
            format::encode_snapshot(b"meta", b"the body"),
            rich_state().to_snapshot_bytes().unwrap(),
        ]),
        huge in select(&HUGE[..]),
        field in 0usize..2,
        set_len in prop::bool::weighted(0.2),
    ) {
        let mut raw = raw;
        if set_len && raw.len() >= SNAPSHOT_HEADER_LEN {
            let at = 12 + 8 * field;
            raw[at..at + 8].copy_from_slice(&huge.to_le_bytes());
        }
        let _ = format::snapshot_claimed_len(&raw);
        let decoded = bounded(raw.len(), || {
            snapshot_file::decode(std::path::Path::new("fuzz"), &raw)
        })?;
        if let Ok((meta, body)) = decoded {
            prop_assert_eq!(format::encode_snapshot(&meta, &body), raw);
        }
    }

    /// Commands as they come from the log or a peer: a decoded command
    /// round-trips and applies to a populated state without breaking it.
    #[test]
    fn commands_decode_and_apply(
        raw in hostile(commands().iter().map(|c| postcard::to_stdvec(c).unwrap()).collect())
    ) {
        let decoded = bounded(raw.len(), || postcard::from_bytes::<Command>(&raw))?;
        if let Ok(cmd) = decoded {
            let again: Command = postcard::from_bytes(&postcard::to_stdvec(&cmd).unwrap()).unwrap();
            prop_assert_eq!(&again, &cmd);
            let mut m = rich_state();
            m.apply(&cmd);
            prop_assert_eq!(m.check_invariants(), Ok(()), "after {:?}", cmd);
        }
        // The outcome of applying, as a forwarded write returns it.
        let _ = bounded(raw.len(), || postcard::from_bytes::<Applied>(&raw))?;
    }

    /// Whole states (`StateMachine::from_snapshot_bytes`): the body is edited
    /// inside a valid frame so the state decoder and its consistency check
    /// see it. An accepted state must be usable.
    #[test]
    fn state_snapshots(
        body in hostile(vec![
            postcard::to_stdvec(&rich_state()).unwrap(),
            postcard::to_stdvec(&StateMachine::new()).unwrap(),
        ])
    ) {
        let framed = format::encode_snapshot(&[], &body);
        let decoded = bounded(framed.len(), || StateMachine::from_snapshot_bytes(&framed))?;
        if let Ok(m) = decoded {
            let again = StateMachine::from_snapshot_bytes(&m.to_snapshot_bytes().unwrap()).unwrap();
            prop_assert_eq!(&again, &m);
            exercise(m)?;
        }
    }

    /// The alarm table a member snapshot may carry after the state.
    #[test]
    fn alarm_tables(raw in hostile(vec![postcard::to_stdvec(&{
        let mut t = AlarmTable::default();
        t.apply(AlarmAction::Activate, 1, AlarmType::NoSpace);
        t.apply(AlarmAction::Activate, 2, AlarmType::Corrupt);
        t
    }).unwrap()])) {
        let decoded = bounded(raw.len(), || postcard::from_bytes::<AlarmTable>(&raw))?;
        if let Ok(t) = decoded {
            let again: AlarmTable = postcard::from_bytes(&postcard::to_stdvec(&t).unwrap()).unwrap();
            prop_assert_eq!(again, t);
        }
    }
}

proptest! {
    // Each case writes a file.
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    /// Backups (`snapshot_file::read_backup`, what `warden snapshot restore`
    /// reads): edited, then either left as is (the SHA-256 trailer must
    /// catch it) or re-sealed so the padding and frame checks are reached.
    #[test]
    fn backups(
        content in hostile(vec![
            format::encode_snapshot(b"meta", b"body"),
            rich_state().to_snapshot_bytes().unwrap(),
        ]),
        reseal in any::<bool>(),
        pad in 0usize..600,
    ) {
        let file = if reseal {
            snapshot_file::seal_backup(content.clone())
        } else {
            // An edited sealed backup, or raw bytes of a sealed-looking size.
            let mut b = content.clone();
            b.resize(b.len() + pad, 0);
            b
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("backup.db");
        std::fs::write(&p, &file).unwrap();
        let read = bounded(file.len(), || snapshot_file::read_backup(&p))?;
        if let Ok((meta, body)) = read {
            // What was accepted is a whole frame at the start of the file.
            let frame = format::encode_snapshot(&meta, &body);
            prop_assert!(file.starts_with(&frame));
        }
    }
}

/// Hand-picked hostile inputs, kept as regression cases.
#[test]
fn hostile_corpus() {
    // A command whose key claims 2^60 bytes: refused, nothing allocated.
    for huge in HUGE {
        let mut raw = vec![0u8]; // Command::Put
        raw.extend(varint(huge)); // key length
        raw.extend_from_slice(b"k");
        let (r, largest) = largest_allocation(|| postcard::from_bytes::<Command>(&raw));
        assert!(r.is_err(), "{huge}");
        assert!(largest <= allocation_bound(raw.len()), "{huge}: {largest}");
        // A txn claiming that many compares: the same.
        let mut raw = vec![2u8];
        raw.extend(varint(huge));
        raw.extend_from_slice(&[0; 8]);
        let (r, largest) = largest_allocation(|| postcard::from_bytes::<Command>(&raw));
        assert!(r.is_err(), "{huge}");
        assert!(largest <= allocation_bound(raw.len()), "{huge}: {largest}");
        // A state whose key map claims that many entries.
        let mut body = postcard::to_stdvec(&StateMachine::new()).unwrap();
        body.truncate(3); // revisions and live-key count of an empty store
        body.extend(varint(huge));
        body.extend_from_slice(&[1, b'k', 0]);
        let framed = format::encode_snapshot(&[], &body);
        let (r, largest) = largest_allocation(|| StateMachine::from_snapshot_bytes(&framed));
        assert!(r.is_err(), "{huge}");
        assert!(
            largest <= allocation_bound(framed.len()),
            "{huge}: {largest}"
        );
    }

    // Fences around a txn: `MAX_NESTING` levels decode, more are refused
    // (the bound is MAX_NESTING open recursive fields). Both fence variants:
    // `Fenced` (tag 10) and `FencedProven` (tag 13, a 32-byte digest after
    // the token). The accepted depth is checked first, so a refusal below
    // is about depth and not about a wrong tag.
    let fence = |proven: bool| -> Vec<u8> {
        if proven {
            let mut f = vec![13, 1, b'l', 1]; // FencedProven { "l", 1, ..
            f.extend_from_slice(&[0xab; 32]);
            f
        } else {
            vec![10, 1, b'l', 1] // Fenced { "l", 1, ..
        }
    };
    for proven in [false, true] {
        let fences = |depth: usize| {
            let mut raw = fence(proven).repeat(depth);
            raw.extend_from_slice(&[2, 0, 0, 0]); // Txn(empty)
            raw
        };
        assert!(postcard::from_bytes::<Command>(&fences(MAX_NESTING)).is_ok());
        for depth in [MAX_NESTING + 1, 1000] {
            assert!(
                postcard::from_bytes::<Command>(&fences(depth)).is_err(),
                "{depth}"
            );
        }
        // Fences and txns mixed: at the bound, and one level past it.
        let mixed = |extra: usize| {
            let mut raw = fence(proven).repeat(MAX_NESTING / 2);
            raw.push(2); // Command::Txn: not a recursive field itself
            let levels = MAX_NESTING - MAX_NESTING / 2 + extra;
            for _ in 0..levels {
                raw.extend_from_slice(&[0, 1, 3]); // success: [RequestOp::Txn(..)]
            }
            raw.extend_from_slice(&[0, 0, 0]);
            raw.extend(std::iter::repeat_n(0u8, levels));
            raw
        };
        assert!(postcard::from_bytes::<Command>(&mixed(0)).is_ok());
        assert!(postcard::from_bytes::<Command>(&mixed(1)).is_err());
    }

    // A snapshot frame whose lengths add up only by overflow.
    let mut raw = format::encode_snapshot(b"m", b"b");
    raw[12..20].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
    raw[20..28].copy_from_slice(&3u64.to_le_bytes());
    assert!(format::decode_snapshot(&raw).is_err());
    assert_eq!(format::snapshot_claimed_len(&raw), None);

    // A sealed backup whose frame claims more than the file holds.
    let mut content = format::encode_snapshot(b"meta", b"body");
    content[20..28].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.db");
    std::fs::write(&p, snapshot_file::seal_backup(content)).unwrap();
    assert!(snapshot_file::read_backup(&p).is_err());
}

/// A small Raft log file, byte for byte the same on every run.
fn log_file(dir: &std::path::Path) -> Vec<u8> {
    use crate::storage::log_db::LogDb;
    let p = dir.join("good.redb");
    let db = LogDb::open(&p).unwrap();
    let entries: Vec<(u64, Vec<u8>)> = (1..=50).map(|i| (i, vec![i as u8; 100])).collect();
    db.append(&entries).unwrap();
    db.put_meta("vote", b"v").unwrap();
    drop(db);
    std::fs::read(&p).unwrap()
}

/// Opens and reads a damaged log file as a member does at start (and
/// closes it); returns whether everything succeeded. Must not panic.
fn open_damaged(dir: &std::path::Path, raw: &[u8], flips: &[(usize, u64)]) -> bool {
    use crate::storage::log_db::LogDb;
    let mut b = raw.to_vec();
    for &(at, bit) in flips {
        let at = at % b.len();
        b[at] ^= 1 << (bit % 8);
    }
    let p = dir.join("damaged.redb");
    std::fs::write(&p, &b).unwrap();
    // The file records its journal: give it the good file's (empty) one, so
    // the open gets past it and reads the damaged file.
    std::fs::copy(dir.join("good.wal"), dir.join("damaged.wal")).unwrap();
    let ok = LogDb::open(&p).is_ok_and(|db| {
        db.verify().is_ok()
            && db.read_range(1..51).is_ok()
            && db.get_meta("vote").is_ok()
            && db.last().is_ok()
    });
    std::fs::remove_file(&p).unwrap();
    let _ = std::fs::remove_file(dir.join("damaged.wal"));
    ok
}

proptest! {
    // Each case writes a 1 MB file.
    #![proptest_config(ProptestConfig { cases: cases(32), ..ProptestConfig::default() })]

    /// Raft log files (`log_db`, redb) with flipped bits: refused or read,
    /// never a panic (redb's own panics are turned into errors).
    #[test]
    fn damaged_log_files(flips in prop::collection::vec((any::<usize>(), 0u64..8), 1..5)) {
        let dir = tempfile::tempdir().unwrap();
        let raw = log_file(dir.path());
        open_damaged(dir.path(), &raw, &flips);
    }
}

/// Bit flips that made redb 4.5 panic opening, reading or closing the
/// file of [`log_file`] (an index out of bounds reading a page, failed
/// assertions on the allocator state): each is now an error naming the file.
#[test]
fn log_files_redb_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let raw = log_file(dir.path());
    for flips in [
        &[(1011027, 3), (130554, 0), (33119, 0), (393839, 4)][..],
        &[(307957, 5), (51726, 7)],
        &[(937981, 7), (49162, 3), (636478, 7)],
        &[(52100, 5), (572149, 5), (343930, 4)],
        &[(33360, 0), (746196, 7), (361441, 3)],
        &[(429460, 2), (322899, 3), (49195, 0)],
        &[(790699, 4), (194604, 4), (16417, 6)],
        &[(36752, 1), (51713, 0), (61334, 2), (22826, 0)],
        &[(33573, 7), (974094, 1), (986895, 1)],
        &[(32763, 4), (779430, 5), (906753, 4), (16415, 7)],
        &[(32844, 3), (686432, 6), (302646, 7), (13755, 4)],
        &[(790887, 6), (51151, 7), (1033982, 2), (198166, 7)],
        &[(892514, 3), (588190, 7), (50212, 1), (488274, 1)],
    ] {
        open_damaged(dir.path(), &raw, flips);
    }
}
