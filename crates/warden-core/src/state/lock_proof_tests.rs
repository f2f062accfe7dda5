//! The state machine with lock handles: a release or a fenced write must
//! carry the digest of the holder's handle (the `…Proven` commands), not
//! just the token everyone can read from `Inspect`. Refusals change
//! nothing; right digests behave as the plain commands always did.

use crate::state::lock_table::{
    AcquireOutcome, AcquireRequest, HandleDigest, LockError, LockEvent, LockMode, HANDLE_LEN,
};
use crate::state::types::PutRequest;
use crate::state::{Command, CommandResult, ErrorClass, StateError, StateMachine};

fn proof(n: u8) -> HandleDigest {
    HandleDigest::of_handle(&[n; HANDLE_LEN])
}

fn acquire(name: &str, lease: i64, p: HandleDigest) -> Command {
    Command::LockAcquireProven {
        req: AcquireRequest {
            name: name.into(),
            mode: LockMode::Exclusive,
            lease,
            priority: 0,
            owner: format!("owner-{lease}"),
            wait: true,
        },
        proof: p,
    }
}

fn release(name: &str, token: u64, p: Option<HandleDigest>) -> Command {
    match p {
        Some(proof) => Command::LockReleaseProven {
            name: name.into(),
            token,
            proof,
        },
        None => Command::LockRelease {
            name: name.into(),
            token,
        },
    }
}

fn fenced(name: &str, token: u64, p: Option<HandleDigest>, value: &str) -> Command {
    let command = Box::new(Command::Put(PutRequest {
        key: b"guarded".to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    }));
    match p {
        Some(proof) => Command::FencedProven {
            name: name.into(),
            token,
            proof,
            command,
        },
        None => Command::Fenced {
            name: name.into(),
            token,
            command,
        },
    }
}

fn granted(m: &mut StateMachine, cmd: &Command) -> u64 {
    match m.apply(cmd).result {
        Ok(CommandResult::LockAcquire(AcquireOutcome::Granted { token })) => token,
        other => panic!("{cmd}: {other:?}"),
    }
}

fn leased() -> StateMachine {
    let mut m = StateMachine::new();
    for id in 1..=3 {
        assert!(m.apply(&Command::LeaseGrant { id, ttl: 60 }).result.is_ok());
    }
    m
}

/// Applies `cmd`, expects `err`, and checks nothing changed.
fn refused(m: &mut StateMachine, cmd: &Command, err: StateError) {
    let before = m.clone();
    let a = m.apply(cmd);
    assert_eq!(a.result, Err(err), "{cmd}");
    assert!(a.events.is_empty() && a.lock_events.is_empty(), "{cmd}");
    assert_eq!(*m, before, "{cmd} changed the state");
}

#[test]
fn the_wrong_handle_neither_releases_nor_fences() {
    let mut m = leased();
    let t = granted(&mut m, &acquire("x", 1, proof(1)));
    let wrong = StateError::Lock(LockError::WrongHandle {
        name: "x".into(),
        token: t,
    });
    let bare = StateError::Lock(LockError::HandleRequired {
        name: "x".into(),
        token: t,
    });
    assert_eq!(wrong.class(), ErrorClass::PermissionDenied);
    assert_eq!(bare.class(), ErrorClass::PermissionDenied);
    assert_eq!(
        wrong.grpc_message(),
        format!("warden: lock \"x\" token {t}: handle does not match the holder")
    );
    refused(&mut m, &release("x", t, Some(proof(2))), wrong.clone());
    refused(&mut m, &release("x", t, None), bare.clone());
    refused(&mut m, &fenced("x", t, Some(proof(2)), "w"), wrong);
    refused(&mut m, &fenced("x", t, None, "w"), bare);
    assert!(m.mvcc().get_meta(b"guarded").is_none());
    // A token that holds nothing is a stale fence, as before.
    refused(
        &mut m,
        &fenced("x", t + 1, Some(proof(1)), "w"),
        StateError::FenceRejected {
            name: "x".into(),
            token: t + 1,
        },
    );
    // The holder's handle does both.
    let rev = m.revision();
    let a = m.apply(&fenced("x", t, Some(proof(1)), "mine"));
    assert!(a.result.is_ok(), "{a:?}");
    assert_eq!(a.revision, rev + 1);
    assert_eq!(
        m.mvcc().get(b"guarded").unwrap().unwrap().value,
        b"mine".to_vec()
    );
    let a = m.apply(&release("x", t, Some(proof(1))));
    assert_eq!(a.result, Ok(CommandResult::LockRelease));
    assert_eq!(
        a.lock_events,
        vec![LockEvent::Released {
            name: "x".into(),
            token: t
        }]
    );
    assert!(m.locks().is_empty());
    assert!(m.check_invariants().is_ok());
}

#[test]
fn a_waiter_granted_later_is_proven_by_its_own_handle() {
    let mut m = leased();
    let t1 = granted(&mut m, &acquire("x", 1, proof(1)));
    let q = m.apply(&acquire("x", 2, proof(2)));
    assert!(matches!(
        q.result,
        Ok(CommandResult::LockAcquire(AcquireOutcome::Queued { .. }))
    ));
    // The holder's lease ends: the waiter is granted in the same entry.
    let r = m.apply(&Command::LeaseRevoke { id: 1 });
    let t2 = r
        .lock_events
        .iter()
        .find_map(|e| match e {
            LockEvent::Granted { token, .. } => Some(*token),
            _ => None,
        })
        .unwrap();
    assert!(t2 > t1);
    assert_eq!(m.locks().token_with_proof("x", &proof(2)), Some(t2));
    // The old holder's handle (with either token) is not the new one's.
    refused(
        &mut m,
        &fenced("x", t2, Some(proof(1)), "stale"),
        StateError::Lock(LockError::WrongHandle {
            name: "x".into(),
            token: t2,
        }),
    );
    refused(
        &mut m,
        &fenced("x", t1, Some(proof(1)), "stale"),
        StateError::FenceRejected {
            name: "x".into(),
            token: t1,
        },
    );
    assert!(m
        .apply(&fenced("x", t2, Some(proof(2)), "w"))
        .result
        .is_ok());
    // Snapshots carry the digest: a restored replica refuses and accepts
    // the same commands.
    let bytes = m.to_snapshot_bytes().unwrap();
    let mut back = StateMachine::from_snapshot_bytes(&bytes).unwrap();
    assert_eq!(back, m);
    refused(
        &mut back,
        &release("x", t2, None),
        StateError::Lock(LockError::HandleRequired {
            name: "x".into(),
            token: t2,
        }),
    );
    assert_eq!(
        back.apply(&release("x", t2, Some(proof(2)))).result,
        Ok(CommandResult::LockRelease)
    );
}

#[test]
fn proven_commands_print_no_digest_and_cost_as_their_twins() {
    let p = proof(1);
    let raw: [u8; 32] = postcard::from_bytes(&postcard::to_stdvec(&p).unwrap()).unwrap();
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let cmds = [
        acquire("x", 1, p),
        release("x", 7, Some(p)),
        fenced("x", 7, Some(p), "v"),
    ];
    let shown: Vec<String> = cmds.iter().map(|c| format!("{c} {c:?}")).collect();
    for s in &shown {
        assert!(!s.contains(&hex) && !s.contains(&format!("{raw:?}")), "{s}");
        assert!(s.contains("(with handle)"), "{s}");
    }
    assert_eq!(cmds[0].quota_cost(), crate::state::machine::LEASE_OVERHEAD);
    assert_eq!(cmds[1].quota_cost(), 0);
    assert_eq!(cmds[2].quota_cost(), fenced("x", 7, None, "v").quota_cost());
    assert!(cmds[2].quota_cost() > 0);
}
