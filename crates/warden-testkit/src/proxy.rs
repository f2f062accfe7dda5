//! TCP proxies between members, so a test or the chaos harness can cut the
//! peer network.
//!
//! Every directed link i → j gets its own listener; member i is started
//! with `--peer-routes` (see [`Proxies::routes`]) so its traffic for member
//! j's real peer address goes through that listener, whatever membership it
//! later learns from a snapshot. Cutting the pair {i, j} drops the open
//! connections of both links and black-holes new ones (accepted, never
//! answered) until healed, like packets lost in a partition; or, with
//! [`Proxies::partition_refusing`], closes the link's listener so new
//! connections are refused, like a firewall that rejects them.
//!
//! Owns only its listeners and their tasks (aborted on drop); never touches
//! the members themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The set of cut member pairs (smaller index first).
#[derive(Default)]
struct Cuts {
    pairs: RwLock<BTreeSet<(usize, usize)>>,
    /// Cut links refuse new connections instead of black-holing them.
    refuse: AtomicBool,
}

impl Cuts {
    fn is_cut(&self, a: usize, b: usize) -> bool {
        let key = (a.min(b), a.max(b));
        self.pairs.read().map(|p| p.contains(&key)).unwrap_or(false)
    }
}

/// The proxies of a cluster.
pub struct Proxies {
    /// (from, to) → listening address.
    addrs: BTreeMap<(usize, usize), String>,
    cuts: Arc<Cuts>,
    changed: watch::Sender<u64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Proxies {
    /// Starts a listener for every directed link between `peer_addrs.len()`
    /// members; link i → j forwards to `peer_addrs[j]`.
    pub async fn start(peer_addrs: &[String]) -> std::io::Result<Proxies> {
        let cuts = Arc::new(Cuts::default());
        let (changed, _) = watch::channel(0u64);
        let mut addrs = BTreeMap::new();
        let mut tasks = Vec::new();
        for i in 0..peer_addrs.len() {
            for (j, target) in peer_addrs.iter().enumerate() {
                if i == j {
                    continue;
                }
                // A port from the same registry as the members' (not any
                // fresh ephemeral one, which may be a port just handed to a
                // member that has not bound it yet), bound as it is chosen:
                // choosing it and binding it later left a moment in which a
                // member's outgoing connection could take it.
                let listener = crate::ports::free_listener()?;
                listener.set_nonblocking(true)?;
                let listener = TcpListener::from_std(listener)?;
                addrs.insert((i, j), listener.local_addr()?.to_string());
                tasks.push(tokio::spawn(serve(
                    listener,
                    target.clone(),
                    (i, j),
                    cuts.clone(),
                    changed.subscribe(),
                )));
            }
        }
        Ok(Proxies {
            addrs,
            cuts,
            changed,
            tasks,
        })
    }

    /// The address member `from` uses to reach member `to`.
    pub fn addr(&self, from: usize, to: usize) -> Option<&str> {
        self.addrs.get(&(from, to)).map(String::as_str)
    }

    /// The `--peer-routes` value for member `from`: each other member's real
    /// peer address mapped to the proxy listener of the link `from` → it.
    pub fn routes(&self, from: usize, peer_addrs: &[String]) -> String {
        peer_addrs
            .iter()
            .enumerate()
            .filter(|(to, _)| *to != from)
            .filter_map(|(to, real)| Some(format!("{real}={}", self.addr(from, to)?)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Cuts every link between members of different groups; members in no
    /// group keep their links.
    pub fn partition(&self, groups: &[Vec<usize>]) {
        let mut pairs = BTreeSet::new();
        for (gi, g) in groups.iter().enumerate() {
            for h in groups.iter().skip(gi + 1) {
                for &a in g {
                    for &b in h {
                        pairs.insert((a.min(b), a.max(b)));
                    }
                }
            }
        }
        self.set(pairs);
    }

    /// Like `partition`, but a cut link's listener is closed: dialling it
    /// gets "connection refused" until healed.
    pub fn partition_refusing(&self, groups: &[Vec<usize>]) {
        self.cuts.refuse.store(true, Ordering::SeqCst);
        self.partition(groups);
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.set(BTreeSet::new());
        self.cuts.refuse.store(false, Ordering::SeqCst);
    }

    fn set(&self, pairs: BTreeSet<(usize, usize)>) {
        if let Ok(mut p) = self.cuts.pairs.write() {
            *p = pairs;
        }
        self.changed.send_modify(|g| *g += 1);
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn serve(
    listener: TcpListener,
    target: String,
    link: (usize, usize),
    cuts: Arc<Cuts>,
    changed: watch::Receiver<u64>,
) {
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    let mut listener = Some(listener);
    let mut watching = changed.clone();
    loop {
        let refusing = cuts.refuse.load(Ordering::SeqCst) && cuts.is_cut(link.0, link.1);
        if refusing {
            // Close the listener until the link heals, then listen again
            // on the same address.
            listener = None;
            until(&cuts, link, &mut watching, false).await;
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => match TcpListener::bind(addr).await {
                Ok(l) => listener.insert(l),
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let accepted = tokio::select! {
            a = l.accept() => a,
            r = watching.changed() => {
                if r.is_err() {
                    return;
                }
                continue;
            }
        };
        let Ok((inbound, _)) = accepted else {
            continue;
        };
        let _ = inbound.set_nodelay(true);
        tokio::spawn(connection(
            inbound,
            target.clone(),
            link,
            cuts.clone(),
            changed.clone(),
        ));
    }
}

/// Waits until the link's cut state is `cut`.
async fn until(cuts: &Cuts, link: (usize, usize), changed: &mut watch::Receiver<u64>, cut: bool) {
    loop {
        if cuts.is_cut(link.0, link.1) == cut {
            return;
        }
        if changed.changed().await.is_err() {
            // The proxies are gone: never resolve.
            std::future::pending::<()>().await;
        }
    }
}

async fn connection(
    mut inbound: TcpStream,
    target: String,
    link: (usize, usize),
    cuts: Arc<Cuts>,
    mut changed: watch::Receiver<u64>,
) {
    if cuts.is_cut(link.0, link.1) {
        // Black hole: hold the connection silently until the cut heals,
        // then close it (the dialer reconnects).
        until(&cuts, link, &mut changed, false).await;
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(&target).await else {
        return;
    };
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = until(&cuts, link, &mut changed, true) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server; returns its address.
    async fn echo() -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(addr: &str) -> bool {
        let attempt = async {
            let mut s = TcpStream::connect(addr).await.ok()?;
            s.write_all(b"ping").await.ok()?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.ok()?;
            Some(&buf == b"ping")
        };
        tokio::time::timeout(Duration::from_millis(500), attempt)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn cuts_and_heals_links() {
        let targets = vec![echo().await, echo().await, echo().await];
        let p = Proxies::start(&targets).await.expect("proxies");
        let a01 = p.addr(0, 1).expect("link").to_string();
        let a21 = p.addr(2, 1).expect("link").to_string();
        assert!(p.addr(1, 1).is_none());
        assert!(round_trip(&a01).await);
        p.partition(&[vec![0], vec![1, 2]]);
        assert!(!round_trip(&a01).await, "0 -> 1 is cut");
        assert!(round_trip(&a21).await, "2 -> 1 is not");
        p.heal();
        assert!(round_trip(&a01).await);
    }

    #[tokio::test]
    async fn routes_name_every_other_member_through_its_link() {
        let targets = vec![echo().await, echo().await, echo().await];
        let p = Proxies::start(&targets).await.expect("proxies");
        let r = p.routes(1, &targets);
        let want = format!(
            "{}={},{}={}",
            targets[0],
            p.addr(1, 0).expect("link"),
            targets[2],
            p.addr(1, 2).expect("link")
        );
        assert_eq!(r, want);
    }
}
