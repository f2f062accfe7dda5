//! Who may speak on the peer port, and what a peer message may claim.
//!
//! - Every peer call carries the cluster id and the sender's member id as
//!   gRPC metadata ([`CLUSTER_ID_HEADER`], [`MEMBER_ID_HEADER`], hex), added
//!   by [`PeerIdentity`], the interceptor of every peer client a member
//!   makes ([`PeerClient`]).
//! - The receiver ([`super::peer_service`]) refuses a call from another
//!   cluster (`FailedPrecondition`), from a sender that is not a member of
//!   its effective membership (`PermissionDenied`), or, with
//!   `--peer-client-cert-auth`, from a sender whose certificate is not valid
//!   for the host of the peer address the membership lists for it
//!   ([`cert_valid_for`]).
//! - Terms and log indexes in Raft messages are bounded ([`check_term`],
//!   [`check_index`]) before openraft sees them, so no message can push the
//!   term to where openraft's next term would overflow, and the vote in a
//!   message must be the sender's own ([`check_vote`]).
//!
//! Must never: let a message past these checks reach openraft, or let a
//! refused caller fill the log (refusals are logged at most once per
//! [`WARN_EVERY`] per reason).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use tonic::metadata::MetadataMap;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Status;

use super::network::SnapshotHeader;
use super::types::{LogId, TypeConfig, Vote};
use warden_proto::peer::raft_peer_client::RaftPeerClient;

/// Metadata key carrying the sender's cluster id (hex).
pub const CLUSTER_ID_HEADER: &str = "warden-cluster-id";
/// Metadata key carrying the sender's member id (hex).
pub const MEMBER_ID_HEADER: &str = "warden-member-id";

/// Terms and log indexes at or above this are refused: a real cluster
/// cannot reach them (2^62 elections or entries), and openraft adds to them
/// without checking for overflow.
pub const MAX_TERM_OR_INDEX: u64 = 1 << 62;

/// Largest step a message may take the term past ours. Each election adds
/// one; no real history of elections missed by one member comes near this.
pub const MAX_TERM_LEAP: u64 = 1 << 32;

/// At most one warning per reason this often (the rest are counted).
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// A peer client that sends this member's identity with every call.
pub type PeerClient = RaftPeerClient<InterceptedService<Channel, PeerIdentity>>;

/// Who is calling: added to every outgoing peer call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    pub cluster_id: u64,
    pub member_id: u64,
}

impl PeerIdentity {
    /// Sets this identity's metadata on `md`.
    pub fn stamp(&self, md: &mut MetadataMap) {
        if let Ok(v) = format!("{:x}", self.cluster_id).parse() {
            md.insert(CLUSTER_ID_HEADER, v);
        }
        if let Ok(v) = format!("{:x}", self.member_id).parse() {
            md.insert(MEMBER_ID_HEADER, v);
        }
    }

    /// The identity a call claims (`None` if missing or malformed).
    pub fn of(md: &MetadataMap) -> Option<PeerIdentity> {
        Self::of_headers(md.as_ref())
    }

    /// [`PeerIdentity::of`] from a request's HTTP headers.
    pub fn of_headers(headers: &axum::http::HeaderMap) -> Option<PeerIdentity> {
        let hex = |k: &str| {
            let v = headers.get(k)?.to_str().ok()?;
            if v.is_empty() || v.len() > 16 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u64::from_str_radix(v, 16).ok()
        };
        Some(PeerIdentity {
            cluster_id: hex(CLUSTER_ID_HEADER)?,
            member_id: hex(MEMBER_ID_HEADER)?,
        })
    }
}

impl tonic::service::Interceptor for PeerIdentity {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        self.stamp(req.metadata_mut());
        Ok(req)
    }
}

/// Why a term is refused, if it is.
pub fn check_term(term: u64, current: u64) -> Result<(), String> {
    if term >= MAX_TERM_OR_INDEX {
        return Err(format!("term {term} is out of range (>= 2^62)"));
    }
    if term > current.saturating_add(MAX_TERM_LEAP) {
        return Err(format!(
            "term {term} is more than 2^32 past the current term {current}"
        ));
    }
    Ok(())
}

/// Why a log index is refused, if it is.
pub fn check_index(index: u64) -> Result<(), String> {
    if index >= MAX_TERM_OR_INDEX {
        return Err(format!("log index {index} is out of range (>= 2^62)"));
    }
    Ok(())
}

fn check_log_id(l: Option<&LogId>, current: u64) -> Result<(), String> {
    match l {
        None => Ok(()),
        Some(l) => {
            check_index(l.index)?;
            check_term(l.leader_id.term, current)
        }
    }
}

/// A vote in a message: in range, and the sender's own (a candidate asks
/// for itself, a leader replicates under its own vote).
pub fn check_vote(v: &Vote, current: u64, sender: u64) -> Result<(), String> {
    check_term(v.leader_id.term, current)?;
    if v.leader_id.node_id != sender {
        return Err(format!(
            "the message carries the vote of member {:x}, but member {sender:x} sent it",
            v.leader_id.node_id
        ));
    }
    Ok(())
}

/// Range checks of a Vote / PreVote request.
pub fn check_vote_request(
    r: &VoteRequest<TypeConfig>,
    current: u64,
    sender: u64,
) -> Result<(), String> {
    check_vote(&r.vote, current, sender)?;
    check_log_id(r.last_log_id.as_ref(), current)
}

/// Range checks of an AppendEntries request (each entry's log id too).
pub fn check_append(
    r: &AppendEntriesRequest<TypeConfig>,
    current: u64,
    sender: u64,
) -> Result<(), String> {
    check_vote(&r.vote, current, sender)?;
    check_log_id(r.prev_log_id.as_ref(), current)?;
    check_log_id(r.leader_commit.as_ref(), current)?;
    let leader_term = r.vote.leader_id.term;
    let term_of = |l: Option<&LogId>| l.map_or(0, |l| l.leader_id.term);
    for (what, l) in [
        ("previous", &r.prev_log_id),
        ("committed", &r.leader_commit),
    ] {
        if term_of(l.as_ref()) > leader_term {
            return Err(format!(
                "the {what} log id's term {} is past the leader's term {leader_term}",
                term_of(l.as_ref())
            ));
        }
    }
    // A leader sends a run of its log: consecutive indexes from the one
    // after the previous entry (0 when there is none), terms never
    // decreasing and never past its own. A run with a gap would be stored
    // with a hole in the log that no later message repairs.
    let mut next = r
        .prev_log_id
        .as_ref()
        .map_or(0, |l| l.index.saturating_add(1));
    let mut term = term_of(r.prev_log_id.as_ref());
    for e in &r.entries {
        check_log_id(Some(&e.log_id), current)?;
        if e.log_id.index != next {
            return Err(format!(
                "entry at index {} where the run needs index {next}: entries must follow the \
                 previous log id without gaps",
                e.log_id.index
            ));
        }
        let t = e.log_id.leader_id.term;
        if t < term || t > leader_term {
            return Err(format!(
                "entry at index {} has term {t}, outside {term}..={leader_term} (the term before \
                 it and the leader's)",
                e.log_id.index
            ));
        }
        term = t;
        next = next.saturating_add(1);
    }
    Ok(())
}

/// Range checks of a snapshot install's header.
pub fn check_snapshot_header(h: &SnapshotHeader, current: u64, sender: u64) -> Result<(), String> {
    check_vote(&h.vote, current, sender)?;
    check_log_id(h.meta.last_log_id.as_ref(), current)?;
    check_log_id(h.meta.last_membership.log_id().as_ref(), current)
}

/// Range checks of a TransferLeader request.
pub fn check_transfer(
    r: &TransferLeaderRequest<TypeConfig>,
    current: u64,
    sender: u64,
) -> Result<(), String> {
    check_vote(r.from_leader(), current, sender)?;
    check_log_id(r.last_log_id(), current)
}

/// Whether the end-entity certificate `cert` (DER) is valid for `host` (a
/// DNS name or an IP address), as a TLS client would check a server's.
pub fn cert_valid_for(cert: &[u8], host: &str) -> Result<(), String> {
    use rustls_pki_types::{CertificateDer, ServerName};
    let der = CertificateDer::from(cert);
    let ee = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| format!("the peer certificate does not parse: {e}"))?;
    let name = ServerName::try_from(host)
        .map_err(|e| format!("{host:?} is not a host name or address: {e}"))?;
    ee.verify_is_valid_for_subject_name(&name)
        .map_err(|e| format!("the peer certificate is not valid for {host}: {e}"))
}

/// Warnings about refused peers, at most one per reason per [`WARN_EVERY`].
#[derive(Default)]
pub struct RefusalLog {
    last: Mutex<BTreeMap<&'static str, (Instant, u64)>>,
}

impl RefusalLog {
    /// Logs `msg` (a refusal for `reason`) unless one was logged recently;
    /// the next warning says how many were left out.
    pub fn warn(&self, reason: &'static str, msg: &str) {
        let now = Instant::now();
        let Ok(mut m) = self.last.lock() else { return };
        match m.get_mut(reason) {
            Some((at, skipped)) if now.duration_since(*at) < WARN_EVERY => {
                *skipped = skipped.saturating_add(1);
            }
            Some((at, skipped)) => {
                tracing::warn!(reason, suppressed = *skipped, "peer call refused: {msg}");
                *at = now;
                *skipped = 0;
            }
            None => {
                tracing::warn!(reason, "peer call refused: {msg}");
                m.insert(reason, (now, 0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::entry::RaftEntry;
    use openraft::vote::leader_id_adv::LeaderId;

    fn vote(term: u64, node: u64) -> Vote {
        Vote::new(term, node)
    }

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(
            LeaderId {
                term,
                node_id: node,
            },
            index,
        )
    }

    #[test]
    fn terms_are_bounded_absolutely_and_relative_to_ours() {
        assert!(check_term(0, 0).is_ok());
        assert!(check_term(5, 3).is_ok());
        assert!(check_term(MAX_TERM_LEAP, 0).is_ok());
        assert!(check_term(MAX_TERM_LEAP + 1, 0).is_err());
        assert!(check_term(u64::MAX, 0).is_err());
        assert!(check_term(u64::MAX, u64::MAX).is_err());
        assert!(check_term(MAX_TERM_OR_INDEX, MAX_TERM_OR_INDEX).is_err());
        assert!(check_term(MAX_TERM_OR_INDEX - 1, MAX_TERM_OR_INDEX - 2).is_ok());
        // An older term is always fine (openraft refuses it itself).
        assert!(check_term(1, 1000).is_ok());
    }

    #[test]
    fn indexes_are_bounded() {
        assert!(check_index(0).is_ok());
        assert!(check_index(MAX_TERM_OR_INDEX - 1).is_ok());
        assert!(check_index(MAX_TERM_OR_INDEX).is_err());
        assert!(check_index(u64::MAX).is_err());
    }

    #[test]
    fn a_vote_must_be_the_senders_and_in_range() {
        assert!(check_vote(&vote(3, 7), 2, 7).is_ok());
        assert!(
            check_vote(&vote(3, 7), 2, 8).is_err(),
            "someone else's vote"
        );
        assert!(check_vote(&vote(u64::MAX, 7), 2, 7).is_err());
        let r = VoteRequest::<TypeConfig>::new(vote(3, 7), Some(log_id(2, 7, u64::MAX)));
        assert!(check_vote_request(&r, 2, 7).is_err(), "last log index");
        let r = VoteRequest::<TypeConfig>::new(vote(3, 7), Some(log_id(2, 7, 10)));
        assert!(check_vote_request(&r, 2, 7).is_ok());
    }

    #[test]
    fn append_entries_checks_every_log_id() {
        let ok = AppendEntriesRequest::<TypeConfig> {
            vote: vote(4, 1),
            prev_log_id: Some(log_id(4, 1, 10)),
            entries: vec![openraft::Entry::new_blank(log_id(4, 1, 11))],
            leader_commit: Some(log_id(4, 1, 10)),
        };
        assert!(check_append(&ok, 4, 1).is_ok());
        let mut bad = ok.clone();
        bad.prev_log_id = Some(log_id(4, 1, u64::MAX - 1));
        assert!(check_append(&bad, 4, 1).is_err());
        let mut bad = ok.clone();
        bad.leader_commit = Some(log_id(u64::MAX, 1, 3));
        assert!(check_append(&bad, 4, 1).is_err());
        let mut bad = ok.clone();
        bad.entries = vec![openraft::Entry::new_blank(log_id(4, 1, MAX_TERM_OR_INDEX))];
        assert!(check_append(&bad, 4, 1).is_err());
        let mut bad = ok.clone();
        bad.vote = vote(1 << 40, 1);
        assert!(check_append(&bad, 4, 1).is_err());
    }

    #[test]
    fn append_entries_must_be_a_run_that_follows_the_previous_entry() {
        let run = |prev: Option<LogId>, entries: &[(u64, u64)]| AppendEntriesRequest::<TypeConfig> {
            vote: vote(4, 1),
            prev_log_id: prev,
            entries: entries
                .iter()
                .map(|&(term, index)| openraft::Entry::new_blank(log_id(term, 1, index)))
                .collect(),
            leader_commit: Some(log_id(3, 1, 10)),
        };
        let prev = Some(log_id(3, 1, 10));
        assert!(check_append(&run(prev, &[(3, 11), (4, 12), (4, 13)]), 4, 1).is_ok());
        assert!(check_append(&run(None, &[(1, 0), (1, 1)]), 4, 1).is_ok());
        assert!(check_append(&run(prev, &[]), 4, 1).is_ok(), "a heartbeat");
        // The forged message that left a hole: entries far past the log.
        let gap = run(prev, &[(4, 110), (4, 111)]);
        assert!(check_append(&gap, 4, 1)
            .unwrap_err()
            .contains("needs index 11"));
        assert!(
            check_append(&run(prev, &[(4, 11), (4, 13)]), 4, 1).is_err(),
            "inner gap"
        );
        assert!(
            check_append(&run(prev, &[(4, 10)]), 4, 1).is_err(),
            "overlaps prev"
        );
        assert!(
            check_append(&run(None, &[(4, 5)]), 4, 1).is_err(),
            "no prev: from 0"
        );
        assert!(
            check_append(&run(prev, &[(2, 11)]), 4, 1).is_err(),
            "term below prev's"
        );
        assert!(
            check_append(&run(prev, &[(4, 11), (3, 12)]), 4, 1).is_err(),
            "term falls"
        );
        assert!(
            check_append(&run(prev, &[(5, 11)]), 4, 1).is_err(),
            "past the leader's term"
        );
        let mut bad = run(prev, &[(4, 11)]);
        bad.leader_commit = Some(log_id(5, 1, 11));
        assert!(
            check_append(&bad, 4, 1).is_err(),
            "commit past the leader's term"
        );
        let bad = run(Some(log_id(5, 1, 10)), &[]);
        assert!(
            check_append(&bad, 4, 1).is_err(),
            "prev past the leader's term"
        );
    }

    #[test]
    fn identity_metadata_round_trips_and_rejects_junk() {
        let id = PeerIdentity {
            cluster_id: 0xdead_beef_0000_0001,
            member_id: u64::MAX,
        };
        let mut md = MetadataMap::new();
        id.stamp(&mut md);
        assert_eq!(PeerIdentity::of(&md), Some(id));
        for junk in ["", "xyz", "-1", "1ffffffffffffffff", "+1"] {
            let mut md = MetadataMap::new();
            id.stamp(&mut md);
            md.insert(
                MEMBER_ID_HEADER,
                junk.parse().unwrap_or_else(|_| "zz".parse().unwrap()),
            );
            assert_eq!(PeerIdentity::of(&md), None, "{junk:?}");
        }
        assert_eq!(PeerIdentity::of(&MetadataMap::new()), None);
    }

    #[test]
    fn a_certificate_is_valid_for_the_names_and_addresses_it_lists() {
        let c = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "n1.example".to_string(),
        ])
        .unwrap();
        let der = c.cert.der().to_vec();
        assert!(cert_valid_for(&der, "127.0.0.1").is_ok());
        assert!(cert_valid_for(&der, "n1.example").is_ok());
        assert!(cert_valid_for(&der, "127.0.0.2").is_err());
        assert!(cert_valid_for(&der, "n2.example").is_err());
        assert!(cert_valid_for(&der, "::1").is_err());
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(cert_valid_for(b"not a certificate", "127.0.0.1").is_err());
    }
}
