//! Unit tests of the auth store: etcd's management rules and the
//! key-range permission checks.

use super::*;
use crate::state::types::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest, RangeRequest,
};

fn add_user(s: &mut AuthStore, name: &str) {
    s.apply(&AuthCommand::UserAdd {
        name: name.into(),
        password_hash: Some("h".into()),
    })
    .unwrap();
}

fn grant(s: &mut AuthStore, role: &str, kind: PermKind, key: &[u8], end: &[u8]) {
    s.apply(&AuthCommand::RoleGrantPermission {
        name: role.into(),
        perm: Permission {
            kind,
            key: key.to_vec(),
            range_end: end.to_vec(),
        },
    })
    .unwrap();
}

/// root user with the root role, auth on, and `alice` with role `app`
/// (read on `app/`, write on `app/w/`).
fn store() -> AuthStore {
    let mut s = AuthStore::default();
    add_user(&mut s, ROOT);
    s.apply(&AuthCommand::UserGrantRole {
        user: ROOT.into(),
        role: ROOT.into(),
    })
    .unwrap();
    add_user(&mut s, "alice");
    s.apply(&AuthCommand::RoleAdd { name: "app".into() })
        .unwrap();
    grant(&mut s, "app", PermKind::Read, b"app/", b"app0");
    grant(&mut s, "app", PermKind::Write, b"app/w/", b"app/w0");
    s.apply(&AuthCommand::UserGrantRole {
        user: "alice".into(),
        role: "app".into(),
    })
    .unwrap();
    s.apply(&AuthCommand::Enable {
        token_key: vec![7; 32],
    })
    .unwrap();
    s
}

#[test]
fn enable_needs_root_user_with_root_role() {
    let mut s = AuthStore::default();
    let enable = AuthCommand::Enable { token_key: vec![1] };
    assert_eq!(s.apply(&enable), Err(AuthError::RootUserNotExist));
    add_user(&mut s, ROOT);
    assert_eq!(s.apply(&enable), Err(AuthError::RootRoleNotExist));
    assert_eq!(
        s.apply(&AuthCommand::UserGrantRole {
            user: ROOT.into(),
            role: ROOT.into()
        }),
        Ok(())
    );
    assert_eq!(s.apply(&enable), Ok(()));
    assert!(s.enabled());
    assert_eq!(s.token_key(), &[1]);
}

#[test]
fn a_failed_change_changes_nothing() {
    let mut s = store();
    let before = s.clone();
    for bad in [
        AuthCommand::UserAdd {
            name: "alice".into(),
            password_hash: None,
        },
        AuthCommand::UserAdd {
            name: String::new(),
            password_hash: None,
        },
        AuthCommand::UserDelete { name: "bob".into() },
        AuthCommand::UserDelete { name: ROOT.into() },
        AuthCommand::RoleDelete { name: ROOT.into() },
        AuthCommand::UserRevokeRole {
            name: ROOT.into(),
            role: ROOT.into(),
        },
        AuthCommand::UserGrantRole {
            user: "alice".into(),
            role: "nope".into(),
        },
        AuthCommand::UserRevokeRole {
            name: "alice".into(),
            role: "other".into(),
        },
        AuthCommand::RoleAdd { name: "app".into() },
        AuthCommand::RoleRevokePermission {
            role: "app".into(),
            key: b"x".to_vec(),
            range_end: vec![],
        },
        AuthCommand::RoleGrantPermission {
            name: "app".into(),
            perm: Permission {
                kind: PermKind::Read,
                key: b"b".to_vec(),
                range_end: b"a".to_vec(),
            },
        },
    ] {
        assert!(s.apply(&bad).is_err(), "{bad:?}");
        assert_eq!(s, before, "{bad:?} changed the store");
    }
}

#[test]
fn revision_counts_applied_changes() {
    let mut s = store();
    let r = s.revision();
    s.apply(&AuthCommand::RoleAdd { name: "x".into() }).unwrap();
    assert_eq!(s.revision(), r + 1);
    assert!(s.apply(&AuthCommand::RoleAdd { name: "x".into() }).is_err());
    assert_eq!(s.revision(), r + 1);
}

#[test]
fn password_change_and_re_add_give_a_new_generation() {
    let mut s = store();
    let g0 = s.user("alice").unwrap().generation;
    s.apply(&AuthCommand::UserChangePassword {
        name: "alice".into(),
        password_hash: Some("h2".into()),
    })
    .unwrap();
    let g1 = s.user("alice").unwrap().generation;
    assert!(g1 > g0);
    s.apply(&AuthCommand::UserDelete {
        name: "alice".into(),
    })
    .unwrap();
    add_user(&mut s, "alice");
    assert!(s.user("alice").unwrap().generation > g1);
}

#[test]
fn role_delete_removes_it_from_users() {
    let mut s = store();
    s.apply(&AuthCommand::RoleDelete { name: "app".into() })
        .unwrap();
    assert!(s.user("alice").unwrap().roles.is_empty());
    assert_eq!(
        s.check_range(Some("alice"), b"app/x", b""),
        Err(AuthError::PermissionDenied)
    );
}

#[test]
fn key_range_checks() {
    let s = store();
    let a = Some("alice");
    assert_eq!(s.check_range(a, b"app/x", b""), Ok(()));
    assert_eq!(s.check_range(a, b"app/", b"app0"), Ok(()));
    assert_eq!(s.check_range(a, b"app/a", b"app/b"), Ok(()));
    // Beyond the granted range, or from before it.
    assert_eq!(
        s.check_range(a, b"app/", b"app1"),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(
        s.check_range(a, b"ap", b"app/z"),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(
        s.check_range(a, b"app/", &[0]),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(
        s.check_range(a, b"secret/x", b""),
        Err(AuthError::PermissionDenied)
    );
    // Read is not write.
    assert_eq!(
        s.check_write(a, b"app/x", b""),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(s.check_write(a, b"app/w/1", b""), Ok(()));
    assert_eq!(
        s.check_range(a, b"app/w/1", b""),
        Ok(()),
        "app/w/ is inside app/"
    );
    // Root may do anything; nobody and unknown users nothing.
    assert_eq!(s.check_write(Some(ROOT), b"anything", &[0]), Ok(()));
    assert_eq!(
        s.check_range(None, b"app/x", b""),
        Err(AuthError::UserEmpty)
    );
    assert_eq!(
        s.check_range(Some("mallory"), b"app/x", b""),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(
        s.check_admin(a),
        Err(AuthError::PermissionDenied),
        "alice is not root"
    );
    assert_eq!(s.check_admin(Some(ROOT)), Ok(()));
}

#[test]
fn adjacent_grants_cover_their_union() {
    let mut s = store();
    s.apply(&AuthCommand::RoleAdd { name: "r2".into() })
        .unwrap();
    grant(&mut s, "r2", PermKind::ReadWrite, b"a", b"c");
    grant(&mut s, "r2", PermKind::Read, b"c", b"e");
    grant(&mut s, "r2", PermKind::Read, b"single", b"");
    grant(&mut s, "r2", PermKind::Read, b"z", &[0]);
    s.apply(&AuthCommand::UserGrantRole {
        user: "alice".into(),
        role: "r2".into(),
    })
    .unwrap();
    let a = Some("alice");
    assert_eq!(s.check_range(a, b"a", b"e"), Ok(()));
    assert_eq!(s.check_range(a, b"b", b"d"), Ok(()));
    assert_eq!(
        s.check_range(a, b"a", b"f"),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(s.check_write(a, b"a", b"c"), Ok(()));
    assert_eq!(
        s.check_write(a, b"a", b"d"),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(s.check_range(a, b"single", b""), Ok(()));
    assert_eq!(
        s.check_range(a, b"single", b"singlf"),
        Err(AuthError::PermissionDenied),
        "a single-key grant does not cover the keys after it"
    );
    assert_eq!(s.check_range(a, b"zz", &[0]), Ok(()));
    assert_eq!(s.check_range(a, b"z", b""), Ok(()));
}

#[test]
fn auth_off_checks_nothing() {
    let mut s = store();
    s.apply(&AuthCommand::Disable).unwrap();
    assert_eq!(s.check_write(None, b"x", &[0]), Ok(()));
    assert_eq!(s.check_admin(None), Ok(()));
    // Off, the root user may be deleted.
    assert_eq!(
        s.apply(&AuthCommand::UserDelete { name: ROOT.into() }),
        Ok(())
    );
}

#[test]
fn commands_need_what_they_touch() {
    let s = store();
    let leases = LeaseTable::default();
    let a = Some("alice");
    let put = |key: &[u8], prev_kv: bool| {
        Command::Put(PutRequest {
            key: key.to_vec(),
            value: b"v".to_vec(),
            prev_kv,
            ..Default::default()
        })
    };
    assert_eq!(s.check_command(a, &put(b"app/w/1", false), &leases), Ok(()));
    assert_eq!(s.check_command(a, &put(b"app/w/1", true), &leases), Ok(()));
    assert_eq!(
        s.check_command(a, &put(b"app/x", false), &leases),
        Err(AuthError::PermissionDenied)
    );
    let del = Command::DeleteRange(DeleteRangeRequest {
        key: b"app/w/".to_vec(),
        range_end: b"app/w0".to_vec(),
        prev_kv: false,
    });
    assert_eq!(s.check_command(a, &del, &leases), Ok(()));
    // A txn needs read on its compares and every op of both branches.
    let txn = |failure: Vec<RequestOp>| {
        Command::Txn(TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal,
                target: CompareTarget::Version(0),
                key: b"app/x".to_vec(),
                range_end: vec![],
            }],
            success: vec![RequestOp::Put(PutRequest {
                key: b"app/w/1".to_vec(),
                ..Default::default()
            })],
            failure,
        })
    };
    assert_eq!(s.check_command(a, &txn(vec![]), &leases), Ok(()));
    let read_secret = RequestOp::Range(RangeRequest {
        key: b"secret/x".to_vec(),
        ..Default::default()
    });
    assert_eq!(
        s.check_command(a, &txn(vec![read_secret]), &leases),
        Err(AuthError::PermissionDenied),
        "the branch not taken is checked too"
    );
    assert_eq!(
        s.check_command(
            a,
            &Command::Compact(crate::state::types::CompactionRequest {
                revision: 1,
                physical: false
            }),
            &leases
        ),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(
        s.check_command(a, &Command::LeaseGrant { id: 1, ttl: 5 }, &leases),
        Ok(())
    );
    assert_eq!(
        s.check_command(None, &Command::LeaseGrant { id: 1, ttl: 5 }, &leases),
        Err(AuthError::UserEmpty)
    );
}

#[test]
fn lease_revoke_needs_write_on_its_keys() {
    let s = store();
    let mut sm = crate::state::StateMachine::new();
    sm.apply(&Command::LeaseGrant { id: 9, ttl: 60 });
    sm.apply(&Command::Put(PutRequest {
        key: b"secret/k".to_vec(),
        value: b"v".to_vec(),
        lease: 9,
        ..Default::default()
    }));
    let revoke = Command::LeaseRevoke { id: 9 };
    assert_eq!(
        s.check_command(Some("alice"), &revoke, sm.leases()),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(s.check_command(Some(ROOT), &revoke, sm.leases()), Ok(()));
    // Attaching a key to that lease is a claim on it as well.
    let attach = Command::Put(PutRequest {
        key: b"app/w/1".to_vec(),
        lease: 9,
        ..Default::default()
    });
    assert_eq!(
        s.check_command(Some("alice"), &attach, sm.leases()),
        Err(AuthError::PermissionDenied)
    );
}

#[test]
fn end_of_single_key_orders_before_longer_keys() {
    // "a" alone covers exactly "a": not "a\0" nor "a\x01".
    assert!(End::of(b"a", b"") < End::Before(b"a\x01".to_vec()));
    assert!(End::of(b"a", b"") == End::Before(b"a\0".to_vec()));
    assert!(End::of(b"a", &[0]) > End::Before(vec![0xff; 64]));
}
