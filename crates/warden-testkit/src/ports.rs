//! Ports for test servers, asked of the OS (bind port 0) and never handed
//! out twice in this process: a member killed by one test leaves its ports
//! free, and without this another test running in parallel could be given
//! them, so the member's restart would find them taken.

use std::net::TcpListener;
use std::sync::Mutex;

/// Every port this process has handed out.
static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// `n` distinct ports on 127.0.0.1 that were free when asked and were never
/// returned before by this process.
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let mut taken = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    // Keep every listener open until all are chosen so the OS does not
    // offer the same port twice in this call.
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if !taken.contains(&port) {
            taken.push(port);
            ports.push(port);
        }
        held.push(l);
    }
    Ok(ports)
}

/// A listener on 127.0.0.1, on a port never handed out before by this
/// process, bound from the start: no moment between choosing the port and
/// binding it in which another socket (a member's outgoing connection, say)
/// could be given it.
pub fn free_listener() -> std::io::Result<TcpListener> {
    let mut taken = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    // Ports handed out before stay held until one is found, so the OS
    // offers another.
    let mut held = Vec::new();
    loop {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if !taken.contains(&port) {
            taken.push(port);
            return Ok(l);
        }
        held.push(l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_the_same_port_twice() {
        let mut all = free_ports(20).unwrap();
        all.extend(free_ports(20).unwrap());
        let mut dedup = all.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), all.len(), "{all:?}");
    }

    #[test]
    fn a_free_listener_is_bound_on_a_port_not_handed_out_before() {
        let before = free_ports(5).unwrap();
        for _ in 0..20 {
            let l = free_listener().unwrap();
            let port = l.local_addr().unwrap().port();
            assert!(!before.contains(&port), "{port} handed out twice");
            assert!(free_ports(1).unwrap()[0] != port);
        }
    }
}
