//! Golden bytes of the lock commands and of a state holding locks, as the
//! builds before lock handles wrote them (`tests/fixtures/v1-lock-commands.txt`
//! and `v1-locks.wdnsnapf`, produced by commit 67150e5 with
//! `WARDEN_BLESS_FIXTURES=1 cargo test -p warden-core lock_golden`). A data
//! dir of those builds holds exactly these bytes in its log and snapshots:
//! they must decode to the same values and re-encode to the same bytes, or
//! the format changed (bump `FORMAT_VERSION`).

use std::path::Path;

use crate::state::lock_table::{AcquireRequest, LockMode};
use crate::state::types::PutRequest;
use crate::state::{Command, StateMachine};

const COMMANDS: &str = include_str!("../../tests/fixtures/v1-lock-commands.txt");
const STATE: &[u8] = include_bytes!("../../tests/fixtures/v1-locks.wdnsnapf");

fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn acquire(name: &str, lease: i64, owner: &str, mode: LockMode, wait: bool) -> Command {
    Command::LockAcquire(AcquireRequest {
        name: name.into(),
        mode,
        lease,
        priority: 3,
        owner: owner.into(),
        wait,
    })
}

/// The lock commands of the old format, by name.
pub(super) fn old_commands() -> Vec<(&'static str, Command)> {
    vec![
        (
            "acquire",
            acquire("jobs", 0x1234, "me", LockMode::Shared, true),
        ),
        (
            "release",
            Command::LockRelease {
                name: "jobs".into(),
                token: 7,
            },
        ),
        (
            "cancel",
            Command::LockCancel {
                name: "jobs".into(),
                waiter_id: 2,
            },
        ),
        (
            "fenced",
            Command::Fenced {
                name: "jobs".into(),
                token: 7,
                command: Box::new(Command::Put(PutRequest {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            },
        ),
    ]
}

/// A state with a held lock and a queued waiter, built by old commands.
pub(super) fn old_state() -> StateMachine {
    let mut m = StateMachine::new();
    for cmd in [
        Command::LeaseGrant { id: 5, ttl: 60 },
        Command::LeaseGrant { id: 6, ttl: 60 },
        acquire("jobs", 5, "holder", LockMode::Exclusive, true),
        acquire("jobs", 6, "waiter", LockMode::Exclusive, true),
    ] {
        assert!(m.apply(&cmd).result.is_ok(), "{cmd}");
    }
    m
}

#[test]
fn lock_golden_bytes_decode_and_reencode_exactly() {
    let mut txt = String::new();
    for (name, cmd) in old_commands() {
        txt.push_str(&format!(
            "{name} {}\n",
            hex(&postcard::to_stdvec(&cmd).unwrap())
        ));
    }
    let state = old_state().to_snapshot_bytes().unwrap();
    if std::env::var_os("WARDEN_BLESS_FIXTURES").is_some() {
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        std::fs::write(out.join("v1-lock-commands.txt"), &txt).unwrap();
        std::fs::write(out.join("v1-locks.wdnsnapf"), &state).unwrap();
    }
    assert_eq!(txt, COMMANDS, "lock command encoding changed");
    for ((name, want), line) in old_commands().into_iter().zip(COMMANDS.lines()) {
        let raw = unhex(line.split(' ').nth(1).unwrap());
        let back: Command = postcard::from_bytes(&raw).unwrap();
        assert_eq!(back, want, "{name}");
    }
    assert_eq!(state, STATE, "snapshot of a state holding locks changed");
    let back = StateMachine::from_snapshot_bytes(STATE).unwrap();
    assert_eq!(back, old_state());
    assert_eq!(back.to_snapshot_bytes().unwrap(), STATE);
}
