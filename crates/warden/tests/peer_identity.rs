//! Peer identity (issue 10): forged peer messages and members of another
//! cluster are refused, and change nothing. Every peer call must carry the
//! cluster id and the sender's member id; the sender must be a member; terms
//! and indexes must be in range; a member publishes only its own client
//! address; over mTLS the sender's certificate must be valid for the host of
//! its advertised peer address.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop the test

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{as_member, eventually, forward_batch_blob, get, ids, put, Cluster};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use tonic::transport::Channel;
use warden_proto::etcdserverpb as pb;
use warden_proto::etcdserverpb::cluster_client::ClusterClient;
use warden_proto::peer::raft_peer_client::RaftPeerClient;
use warden_proto::peer::Blob;
use warden_server::node::network::{encode, SnapshotHeader};
use warden_server::node::types::{LogId, Request, TypeConfig, Vote};
use warden_server::node::ForwardRequest;

const ELECT: Duration = Duration::from_secs(20);

fn peer_client(ch: Channel) -> RaftPeerClient<Channel> {
    RaftPeerClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

async fn plain_peer(addr: &str) -> RaftPeerClient<Channel> {
    peer_client(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

fn log_id(term: u64, node: u64, index: u64) -> LogId {
    LogId::new(
        openraft::vote::leader_id_adv::LeaderId {
            term,
            node_id: node,
        },
        index,
    )
}

fn refused_with<T: std::fmt::Debug>(what: &str, code: tonic::Code, r: Result<T, tonic::Status>) {
    match r {
        Ok(v) => panic!("{what}: accepted: {v:?}"),
        Err(s) => assert_eq!(s.code(), code, "{what}: {s:?}"),
    }
}

/// What must not change: every member's term and leader, the member list's
/// client URLs, and the data.
#[derive(Debug, PartialEq)]
struct Seen {
    terms: Vec<(u64, u64)>,
    clients: Vec<(u64, Vec<String>)>,
    value: Option<Vec<u8>>,
}

async fn seen(c: &Cluster) -> Seen {
    let mut terms = Vec::new();
    for m in &c.members {
        if m.child.is_some() {
            let s = common::status(&m.client).await.unwrap();
            terms.push((s.raft_term, s.leader));
        }
    }
    let mut list = ClusterClient::new(c.channel(0))
        .member_list(pb::MemberListRequest { linearizable: true })
        .await
        .unwrap()
        .into_inner()
        .members
        .into_iter()
        .map(|m| (m.id, m.client_urls))
        .collect::<Vec<_>>();
    list.sort();
    Seen {
        terms,
        clients: list,
        value: get(&c.members[0].client, "k", false).await.unwrap(),
    }
}

/// Waits until all members agree on a leader and have every client URL
/// published, and returns what they show.
async fn settled(c: &Cluster) -> Seen {
    c.wait_leader(ELECT).await;
    eventually(ELECT, || async {
        let s = seen(c).await;
        let published = s.clients.len() == c.members.len()
            && s.clients.iter().all(|(_, urls)| !urls.is_empty());
        let agreed = s.terms.windows(2).all(|w| w[0] == w[1]);
        if published && agreed && s.value.is_some() {
            Ok(())
        } else {
            Err(format!("not settled: {s:?}"))
        }
    })
    .await;
    seen(c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_peer_messages_are_refused_and_change_nothing() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(ELECT).await;
    eventually(ELECT, || async {
        put(&c.members[leader].client, "k", "v")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    let before = settled(&c).await;
    let leader = c.wait_leader(ELECT).await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let (cluster, leader_id, term) = ids(&c.members[leader].client).await.unwrap();
    let (_, follower_id, _) = ids(&c.members[follower].client).await.unwrap();
    let (_, other_id, _) = ids(&c.members[other].client).await.unwrap();
    let mut to_follower = plain_peer(&c.members[follower].peer).await;
    let mut to_leader = plain_peer(&c.members[leader].peer).await;

    // A vote with a huge term, as a real member (other), to the follower:
    // out of range, never reaches Raft, the term is not saved.
    for t in [u64::MAX, 1 << 62, term + (1 << 33)] {
        let vote = VoteRequest::<TypeConfig>::new(
            Vote::new(t, other_id),
            Some(log_id(t, other_id, u64::MAX)),
        );
        let blob = encode(&vote).unwrap();
        refused_with(
            "huge vote",
            tonic::Code::InvalidArgument,
            to_follower
                .vote(as_member(blob.clone(), cluster, other_id))
                .await,
        );
        refused_with(
            "huge pre-vote",
            tonic::Code::InvalidArgument,
            to_follower
                .pre_vote(as_member(blob.clone(), cluster, other_id))
                .await,
        );
        // The same without identity: refused before it is read.
        refused_with(
            "anonymous vote",
            tonic::Code::PermissionDenied,
            to_follower.vote(blob).await,
        );
    }
    // A vote in range but for someone else than the sender.
    let vote = VoteRequest::<TypeConfig>::new(
        Vote::new(term + 1, leader_id),
        Some(log_id(term, leader_id, 1000)),
    );
    refused_with(
        "vote for another member",
        tonic::Code::InvalidArgument,
        to_follower
            .vote(as_member(encode(&vote).unwrap(), cluster, other_id))
            .await,
    );

    // A snapshot install from a member id the cluster does not have.
    let stranger = 0x5eed_0000_0000_0001;
    let header = SnapshotHeader {
        vote: Vote::new_committed(term + 1, stranger),
        meta: Default::default(),
    };
    let stream = futures::stream::iter(vec![
        encode(&header).unwrap(),
        Blob {
            data: vec![0; 4096],
        },
    ]);
    // Replication from a sender we do not list is refused while the members
    // we know are asked whether it joined after our membership (nobody
    // vouches for a stranger, so it stays refused).
    refused_with(
        "snapshot from a stranger",
        tonic::Code::Unavailable,
        to_follower
            .install_snapshot(as_member(stream, cluster, stranger))
            .await,
    );

    // A heartbeat in the leader's name with a higher term, from another
    // cluster: without the check the follower would take the new term.
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term + 5, leader_id),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    let blob = encode(&append).unwrap();
    refused_with(
        "append from another cluster",
        tonic::Code::FailedPrecondition,
        to_follower
            .append_entries(as_member(blob.clone(), cluster ^ 1, leader_id))
            .await,
    );
    let stream = futures::stream::iter(vec![blob.clone()]);
    refused_with(
        "stream append from another cluster",
        tonic::Code::FailedPrecondition,
        to_follower
            .stream_append(as_member(stream, cluster ^ 1, leader_id))
            .await
            .map(|_| ()),
    );
    // ...and from a stranger of this cluster.
    refused_with(
        "append from a stranger",
        tonic::Code::Unavailable,
        to_follower
            .append_entries(as_member(blob.clone(), cluster, stranger))
            .await,
    );
    // Once the members were asked (and said no), still refused.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        refused_with(
            "append from a stranger, asked about",
            tonic::Code::Unavailable,
            to_follower
                .append_entries(as_member(blob.clone(), cluster, stranger))
                .await,
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A forged Publish: member `other` rewrites the follower's client URL.
    let publish = ForwardRequest::Write(Request::Publish {
        node_id: follower_id,
        name: c.members[follower].name.clone(),
        client_addr: "203.0.113.9:2379".into(),
    });
    refused_with(
        "publish for another member",
        tonic::Code::PermissionDenied,
        to_leader
            .forward(as_member(encode(&publish).unwrap(), cluster, other_id))
            .await,
    );
    // The same inside a batch of forwarded writes (the batched write is
    // the `Request` and no request id).
    let mut item = encode(&publish).unwrap().data[1..].to_vec();
    item.push(0);
    refused_with(
        "publish for another member in a batch",
        tonic::Code::PermissionDenied,
        to_leader
            .forward_batch(as_member(forward_batch_blob(&[item]), cluster, other_id))
            .await,
    );
    // The same from a stranger, or from another cluster.
    refused_with(
        "publish from a stranger",
        tonic::Code::PermissionDenied,
        to_leader
            .forward(as_member(encode(&publish).unwrap(), cluster, stranger))
            .await,
    );
    refused_with(
        "publish from another cluster",
        tonic::Code::FailedPrecondition,
        to_leader
            .forward(as_member(
                encode(&publish).unwrap(),
                cluster ^ 1,
                follower_id,
            ))
            .await,
    );
    // Asking for the applied membership is open to anyone of the cluster
    // (a removed member asks it), even a stranger.
    assert!(to_leader
        .forward(as_member(
            encode(&ForwardRequest::AppliedMembership).unwrap(),
            cluster,
            stranger
        ))
        .await
        .is_ok());

    // Nothing changed: terms, leader, client URLs, data.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(seen(&c).await, before);
    // The refusals were logged (rate-limited) by the receivers.
    let log = c.log(follower);
    assert!(log.contains("peer call refused"), "{log}");
    assert!(log.contains("cluster id mismatch"), "{log}");
    // And the cluster still takes writes.
    put(&c.members[follower].client, "k2", "v2").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_another_cluster_is_refused() {
    let c = Cluster::start(3);
    eventually(ELECT, || async {
        put(&c.members[0].client, "k", "v")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    let before = settled(&c).await;

    // A member named n1 (so with n1's member id) of a cluster that lists
    // this cluster's n2 and n3 peer addresses but its own n1: another
    // --initial-cluster, hence another cluster id. It campaigns at n2 and n3.
    let ports = common::free_ports(2);
    let stray_peer = format!("127.0.0.1:{}", ports[1]);
    let initial = format!(
        "n1={stray_peer},n2={},n3={}",
        c.members[1].peer, c.members[2].peer
    );
    let dir = c.dir().join("stray");
    let log = std::fs::File::create(c.dir().join("stray.log")).unwrap();
    let mut stray = Command::new(common::BIN)
        .arg("server")
        .args(["--name", "n1"])
        .arg("--data-dir")
        .arg(&dir)
        .args(["--client-addr", &format!("127.0.0.1:{}", ports[0])])
        .args(["--peer-addr", &stray_peer])
        .args(["--initial-cluster", &initial])
        .args(["--election-timeout-min-ms", "300"])
        .args(["--election-timeout-max-ms", "600"])
        .args(["--heartbeat-interval-ms", "50"])
        .env("WARDEN_LOG", "info,openraft=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // Several election timeouts of the stray member.
    eventually(ELECT, || async {
        let logs = c.log(1) + &c.log(2);
        if logs.contains("cluster id mismatch") {
            Ok(())
        } else {
            Err("no refusal logged yet".to_string())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = seen(&c).await;
    let _ = stray.kill();
    let _ = stray.wait();
    assert_eq!(after, before);
}

/// Certificates from one CA: `members` valid for 127.0.0.1 and localhost
/// (what every member of the test cluster presents), `elsewhere` valid only
/// for 127.0.0.2 (a real certificate of the same CA, for another host).
struct Pki {
    dir: std::path::PathBuf,
}

impl Pki {
    fn make(dir: &std::path::Path) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            KeyUsagePurpose,
        };
        std::fs::create_dir_all(dir).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        for (name, hosts) in [
            ("member", vec!["127.0.0.1", "localhost"]),
            ("elsewhere", vec!["127.0.0.2"]),
        ] {
            let mut p =
                CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                    .unwrap();
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
        }
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }

    fn tls(&self, who: &str) -> warden_client::TlsOptions {
        warden_client::TlsOptions {
            ca: Some(self.dir.join("ca.pem")),
            cert: Some(self.dir.join(format!("{who}.pem"))),
            key: Some(self.dir.join(format!("{who}-key.pem"))),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mtls_a_certificate_must_match_the_senders_address() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::make(&tmp.path().join("pki"));
    let (cert, key, ca) = (
        pki.path("member.pem"),
        pki.path("member-key.pem"),
        pki.path("ca.pem"),
    );
    let c = Cluster::start_with(
        3,
        &[
            "--peer-cert-file",
            &cert,
            "--peer-key-file",
            &key,
            "--peer-trusted-ca-file",
            &ca,
            "--peer-client-cert-auth",
        ],
    );
    eventually(ELECT, || async {
        put(&c.members[0].client, "k", "v")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    let before = settled(&c).await;
    let leader = c.wait_leader(ELECT).await;
    let follower = (leader + 1) % 3;
    let (cluster, _, term) = ids(&c.members[follower].client).await.unwrap();
    let (_, leader_id, _) = ids(&c.members[leader].client).await.unwrap();
    let peer = &c.members[follower].peer;
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term + 5, leader_id),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    let blob = encode(&append).unwrap();

    // A certificate of the same CA, but for 127.0.0.2: it may not speak as
    // the leader, whose peer address is on 127.0.0.1.
    let mut elsewhere = peer_client(common::tls_channel(peer, &pki.tls("elsewhere")));
    let e = elsewhere
        .append_entries(as_member(blob.clone(), cluster, leader_id))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("not valid for 127.0.0.1"), "{e:?}");

    // A member's certificate passes admission (then an undecodable message
    // is refused by the decoder: an answer from past the identity checks).
    let mut member = peer_client(common::tls_channel(peer, &pki.tls("member")));
    let e = member
        .append_entries(as_member(
            Blob {
                data: vec![0xff; 12],
            },
            cluster,
            leader_id,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(seen(&c).await, before);
}
