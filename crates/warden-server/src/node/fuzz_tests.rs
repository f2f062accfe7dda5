//! Fuzz tests of the server's decoders of peer and disk bytes
//! (docs/testing.md, "Fuzzing"): peer messages (`network::decode` of every
//! request and reply type), Raft log payloads (`log_store`), member
//! snapshots and backups (`state_machine::parse_snapshot`, `restore`) and
//! `member.json` (`Identity::load`). Inputs are random bytes and valid
//! encodings edited by `warden_core::testing::mutate`; every decoder must
//! return an error or a value that re-encodes stably (and, for a state, is
//! usable), without panicking or allocating more than the bound for its
//! input. The core's decoders have their own (`warden_core::fuzz_tests`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, VoteRequest, VoteResponse,
};
use openraft::testing::log_id;
use openraft::{EntryPayload, Membership};
use proptest::prelude::*;
use proptest::sample::select;
use serde::de::DeserializeOwned;
use serde::Serialize;
use warden_core::state::alarm::{AlarmAction, AlarmType};
use warden_core::state::types::{PutRequest, TxnRequest};
use warden_core::state::{Command, CommandResult, StateError};
use warden_core::storage::{format, snapshot_file};
use warden_core::testing::{allocation_bound, cases, largest_allocation, mutate};
use warden_proto::peer::Blob;

use super::lessor::TimeToLive;
use super::membership::{Applied, Identity, MemberOp};
use super::network::{decode, encode, Remote, SnapshotHeader};
use super::state_machine::{load_snapshot, parse_snapshot, restore, samples, SmData, SmStore};
use super::types::{Entry, LogId, Member, Request, Response, SnapshotMeta, TypeConfig, Vote};
use super::{ForwardRequest, ForwardResponse, NodeError};

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

fn bytes<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap()
}

fn membership() -> Membership<u64, Member> {
    let member = |n: &str| Member {
        name: n.into(),
        peer_addr: format!("{n}.example:2380"),
    };
    Membership::new(
        vec![BTreeSet::from([1u64, 2]), BTreeSet::from([2u64, 3])],
        BTreeMap::from([
            (1, member("a")),
            (2, member("b")),
            (3, member("c")),
            (4, member("d")),
        ]),
    )
    .unwrap()
}

fn entries() -> Vec<Entry> {
    let txn = Command::Txn(TxnRequest {
        compare: Vec::new(),
        success: vec![warden_core::state::types::RequestOp::Put(PutRequest {
            key: b"k".to_vec(),
            value: vec![7; 40],
            ..PutRequest::default()
        })],
        failure: Vec::new(),
    });
    vec![
        Entry {
            log_id: log_id::<TypeConfig>(3, 1, 6),
            payload: EntryPayload::Blank,
        },
        samples::entry(),
        Entry {
            log_id: log_id::<TypeConfig>(3, 1, 7),
            payload: EntryPayload::Normal(Request::kv(txn)),
        },
        Entry {
            log_id: log_id::<TypeConfig>(3, 1, 8),
            payload: EntryPayload::Membership(membership()),
        },
        Entry {
            log_id: log_id::<TypeConfig>(3, 1, 9),
            payload: EntryPayload::Normal(Request::Publish {
                node_id: 2,
                name: "b".into(),
                client_addr: "b.example:2379".into(),
            }),
        },
        Entry {
            log_id: log_id::<TypeConfig>(3, 1, 10),
            payload: EntryPayload::Normal(Request::Alarm {
                action: AlarmAction::Activate,
                member_id: 2,
                alarm: AlarmType::NoSpace,
            }),
        },
    ]
}

fn meta() -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: Some(log_id::<TypeConfig>(3, 1, 10)),
        last_membership: openraft::StoredMembership::new(
            Some(log_id::<TypeConfig>(3, 1, 8)),
            membership(),
        ),
    }
}

/// Valid encodings of every message a member reads from a peer.
fn peer_messages() -> Vec<Vec<u8>> {
    let vote = samples::vote();
    let last = Some(log_id::<TypeConfig>(3, 1, 10));
    let response = Response {
        revision: 9,
        result: Ok(Some(CommandResult::Put(Default::default()))),
    };
    let forward_responses = [
        ForwardResponse::Write(response, 10),
        ForwardResponse::Write(
            Response {
                revision: 9,
                result: Err(StateError::LeaseNotFound),
            },
            11,
        ),
        ForwardResponse::ReadIndex(10),
        ForwardResponse::NotLeader(Some(2)),
        ForwardResponse::Failed(NodeError::Refused {
            code: 9,
            message: "no".into(),
        }),
        ForwardResponse::LeaseRenew(Ok(30)),
        ForwardResponse::LeaseTimeToLive(Ok(TimeToLive {
            id: 7,
            remaining: 3,
            granted: 10,
            keys: vec![b"a".to_vec(), b"b".to_vec()],
        })),
        ForwardResponse::MembersDone,
        ForwardResponse::AppliedMembership(Applied {
            index: 8,
            ids: BTreeSet::from([1, 2, 3]),
        }),
    ];
    let mut v = vec![
        bytes(&AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id: Some(log_id::<TypeConfig>(2, 1, 5)),
            entries: entries(),
            leader_commit: last,
        }),
        bytes(&VoteRequest::<TypeConfig>::new(vote, last)),
        bytes(&TransferLeaderRequest::<TypeConfig>::new(vote, 2, last)),
        bytes(&SnapshotHeader { vote, meta: meta() }),
        bytes(&ForwardRequest::Write(Request::kv(samples::put()))),
        bytes(&ForwardRequest::LeaseTimeToLive(7)),
        bytes(&ForwardRequest::Members(MemberOp::Add {
            id: 4,
            peer_addr: "d.example:2380".into(),
            voter: true,
        })),
        bytes(&Remote::<AppendEntriesResponse<TypeConfig>>::Ok(
            AppendEntriesResponse::PartialSuccess(last),
        )),
        bytes(&Remote::<StreamAppendResult<TypeConfig>>::Ok(Ok(last))),
        bytes(&Remote::<VoteResponse<TypeConfig>>::Ok(VoteResponse::new(
            vote, last, true,
        ))),
        bytes(&Remote::<SnapshotResponse<TypeConfig>>::Ok(
            SnapshotResponse::new(vote),
        )),
        bytes(&Remote::<()>::Err("refused".into())),
    ];
    v.extend(forward_responses.iter().map(bytes));
    v
}

/// Decodes `raw` as `T` within the allocation bound; if it decodes, its
/// encoding must decode to the same encoding again.
fn check<T: Serialize + DeserializeOwned>(raw: &[u8]) -> Result<(), TestCaseError> {
    let blob = Blob { data: raw.to_vec() };
    let (r, largest) = largest_allocation(|| decode::<T>(&blob));
    prop_assert!(
        largest <= allocation_bound(raw.len()),
        "decoding {} bytes as {} allocated {} bytes at once",
        raw.len(),
        std::any::type_name::<T>(),
        largest
    );
    if let Ok(v) = r {
        let once = encode(&v).unwrap();
        let twice = encode(&decode::<T>(&once).unwrap()).unwrap();
        prop_assert_eq!(once.data, twice.data, "{}", std::any::type_name::<T>());
    }
    Ok(())
}

/// A decoded state must be usable: reads, writes, compaction.
fn exercise(mut data: SmData) {
    let _ = data.kv.range(&Default::default());
    let _ = data.kv.size();
    let _ = data.kv.hash_kv(data.kv.revision());
    data.kv.apply(&samples::put());
    data.kv.apply(&Command::Compact(
        warden_core::state::types::CompactionRequest {
            revision: data.kv.revision(),
            physical: false,
        },
    ));
    let _ = data.alarms.is_empty();
    let _ = data.last_membership.membership().nodes().count();
}

fn rich_data() -> SmData {
    let mut d = samples::data();
    d.kv.apply(&Command::LeaseGrant { id: 7, ttl: 60 });
    d.kv.apply(&Command::Put(PutRequest {
        key: b"leased".to_vec(),
        value: b"v".to_vec(),
        lease: 7,
        ..PutRequest::default()
    }));
    d.alarms.apply(AlarmAction::Activate, 1, AlarmType::NoSpace);
    d.last_applied = Some(log_id::<TypeConfig>(3, 1, 10));
    d.last_membership = meta().last_membership;
    d
}

/// The meta and body a member writes for `data` (the state's alarm table
/// appended when not empty).
fn sections(data: &SmData) -> (Vec<u8>, Vec<u8>) {
    let meta = SnapshotMeta {
        last_log_id: data.last_applied,
        last_membership: data.last_membership.clone(),
    };
    let mut body = bytes(data);
    if !data.alarms.is_empty() {
        body.extend(bytes(&data.alarms));
    }
    (bytes(&meta), body)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(512), ..ProptestConfig::default() })]

    /// Every peer request this member serves and every reply it reads.
    #[test]
    fn peer_messages_decode_or_fail_cleanly(raw in hostile(peer_messages())) {
        check::<AppendEntriesRequest<TypeConfig>>(&raw)?;
        check::<VoteRequest<TypeConfig>>(&raw)?;
        check::<TransferLeaderRequest<TypeConfig>>(&raw)?;
        check::<SnapshotHeader>(&raw)?;
        check::<ForwardRequest>(&raw)?;
        check::<ForwardResponse>(&raw)?;
        check::<Remote<AppendEntriesResponse<TypeConfig>>>(&raw)?;
        check::<Remote<StreamAppendResult<TypeConfig>>>(&raw)?;
        check::<Remote<VoteResponse<TypeConfig>>>(&raw)?;
        check::<Remote<SnapshotResponse<TypeConfig>>>(&raw)?;
        check::<Remote<()>>(&raw)?;
    }

    /// Raft log payloads (`log_store`: entries under their index, and the
    /// vote, committed and purged ids under meta keys), edited inside a
    /// valid record so the payload decoder is reached.
    #[test]
    fn log_payloads(payload in hostile({
        let mut v: Vec<Vec<u8>> = entries().iter().map(bytes).collect();
        v.push(bytes(&samples::vote()));
        v.push(bytes(&samples::committed()));
        v.push(bytes(&samples::purged()));
        v
    })) {
        let record = format::encode_record(&payload);
        let (_, inner) = format::decode_record(&record).unwrap();
        check::<Entry>(inner)?;
        check::<Vote>(inner)?;
        check::<Option<LogId>>(inner)?;
        check::<LogId>(inner)?;
    }

    /// Member snapshots: meta and body edited inside a valid frame, as
    /// `load_snapshot`, `load_backup` and an `InstallSnapshot` receiver
    /// parse them. An accepted state re-encodes to one that parses equal,
    /// and is usable.
    #[test]
    fn member_snapshots(
        which in 0usize..2,
        edit_meta in prop::bool::weighted(0.3),
        e in edits(),
        random in prop::collection::vec(any::<u8>(), 0..128),
        use_random in prop::bool::weighted(0.1),
    ) {
        let data = if which == 0 { samples::data() } else { rich_data() };
        let (mut meta, mut body) = sections(&data);
        let target = if edit_meta { &mut meta } else { &mut body };
        *target = if use_random { random } else { mutate(target, &e) };
        let input = meta.len() + body.len();
        let (r, largest) =
            largest_allocation(|| parse_snapshot(Path::new("fuzz"), &meta, &body));
        prop_assert!(largest <= allocation_bound(input), "{} bytes: {}", input, largest);
        // The same frame as a file, decoded as it is read (restarts and
        // received snapshots): the same answer, within the same bound
        // plus the read buffer.
        let dir = tempfile::tempdir().unwrap();
        let file = snapshot_file::write_atomic(
            dir.path(),
            "fuzz.snap",
            &snapshot_file::encode(&meta, &body),
        )
        .unwrap();
        let (streamed, largest) = largest_allocation(|| load_snapshot(&file));
        let bound = allocation_bound(input).max(snapshot_file::STREAM_BUFFER + 4096);
        prop_assert!(largest <= bound, "{} bytes streamed: {}", input, largest);
        match (&r, &streamed) {
            (Ok((_, d)), Ok((_, ds))) => prop_assert_eq!(d, ds),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "in memory {:?}, streamed {:?}", r.is_ok(), streamed.is_ok()),
        }
        if let Ok((m, d)) = r {
            prop_assert_eq!(m.last_log_id, d.last_applied);
            let (meta2, body2) = sections(&d);
            let (_, d2) = parse_snapshot(Path::new("fuzz"), &meta2, &body2).unwrap();
            prop_assert_eq!(&d2, &d);
            exercise(d);
        }
    }
}

proptest! {
    // Each case writes files.
    #![proptest_config(ProptestConfig { cases: cases(128), ..ProptestConfig::default() })]

    /// `warden snapshot restore`: a sealed backup whose body was edited
    /// (and re-sealed, so the state decoder is reached). If restore
    /// accepts it, a member opens the restored data dir.
    #[test]
    fn restore_of_edited_backups(e in edits()) {
        let (meta, body) = sections(&rich_data());
        let body = mutate(&body, &e);
        let dir = tempfile::tempdir().unwrap();
        let backup = dir.path().join("backup.db");
        std::fs::write(&backup, snapshot_file::seal_backup(snapshot_file::encode(&meta, &body)))
            .unwrap();
        let snap = dir.path().join("snap");
        if restore(&backup, &snap).is_ok() {
            prop_assert!(SmStore::open(&snap).is_ok());
        }
    }

    /// `member.json`: random bytes or an edited valid file; an accepted
    /// identity saves and loads back equal.
    #[test]
    fn identity_files(raw in hostile(vec![
        serde_json::to_vec_pretty(&Identity {
            name: "n1".into(),
            id: 1 << 63,
            cluster_id: 42,
            joined: true,
            removed_at: Some(9),
            listed_at: Some(3),
            log_started: true,
        }).unwrap(),
        br#"{"name":"n","id":1,"cluster_id":2,"joined":false}"#.to_vec(),
    ])) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("member.json"), &raw).unwrap();
        let (r, largest) = largest_allocation(|| Identity::load(dir.path()));
        prop_assert!(largest <= allocation_bound(raw.len()), "{}", largest);
        if let Ok(Some(id)) = r {
            id.save(dir.path()).unwrap();
            prop_assert_eq!(Identity::load(dir.path()).unwrap(), Some(id));
        }
    }
}

/// Hand-picked hostile peer and disk inputs, kept as regression cases.
#[test]
fn hostile_corpus() {
    use warden_core::testing::{varint, HUGE};
    for huge in HUGE {
        // AppendEntries whose entry list claims `huge` entries.
        let mut raw = bytes(&AppendEntriesRequest::<TypeConfig> {
            vote: samples::vote(),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        });
        // vote (term, leader id, committed) then `None` prev, then the count.
        let count_at = raw.len() - 2;
        assert_eq!(raw[count_at..], [0, 0]);
        raw.splice(count_at..=count_at, varint(huge));
        let (r, largest) = largest_allocation(|| {
            decode::<AppendEntriesRequest<TypeConfig>>(&Blob { data: raw.clone() })
        });
        assert!(r.is_err(), "{huge}");
        assert!(largest <= allocation_bound(raw.len()), "{huge}: {largest}");
        // A lease TTL reply with a key list of `huge` keys.
        let ttl = |keys| {
            bytes(&ForwardResponse::LeaseTimeToLive(Ok(TimeToLive {
                id: 7,
                remaining: 3,
                granted: 10,
                keys,
            })))
        };
        // LeaseTimeToLive(Ok { 7, 3, 10, keys: [] })
        let mut raw = vec![5u8, 0, 14, 6, 20, 0];
        assert_eq!(raw, ttl(Vec::new()));
        raw.pop();
        raw.extend(varint(huge));
        raw.extend_from_slice(&[1, b'a']);
        let (r, largest) =
            largest_allocation(|| decode::<ForwardResponse>(&Blob { data: raw.clone() }));
        assert!(r.is_err(), "{huge}");
        assert!(largest <= allocation_bound(raw.len()), "{huge}: {largest}");
    }
    // member.json nested far deeper than serde_json's recursion limit.
    let dir = tempfile::tempdir().unwrap();
    let deep = "[".repeat(100_000);
    std::fs::write(dir.path().join("member.json"), deep).unwrap();
    assert!(Identity::load(dir.path()).is_err());
}
