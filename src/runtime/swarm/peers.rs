//! The ingress side of [`crate::announce`]: a thread that receives the other
//! nodes' announcements of return paths on `node.address:node.announce_port`
//! and hands them to the control thread, which decides what they mean.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::{Receiver, Sender};

use crate::runtime::doorbell::Doorbell;

/// Datagrams waiting for the control thread, at most: a flood of them
/// must not grow memory; what does not fit is dropped (a real node
/// announces again within a second).
const BACKLOG: usize = 1024;

/// The running listener; dropping it stops the thread.
pub struct PeerListener {
    pub datagrams: Receiver<(Ipv4Addr, Vec<u8>)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PeerListener {
    pub fn start(addr: Ipv4Addr, port: u16, bell: Arc<Doorbell>) -> std::io::Result<PeerListener> {
        let sock = UdpSocket::bind((addr, port))?;
        // Short, so that a stop is seen soon.
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let (tx, datagrams) = crossbeam::channel::bounded(BACKLOG);
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("mg-announce".into())
            .spawn(move || listen(sock, tx, bell, st))?;
        Ok(PeerListener {
            datagrams,
            stop,
            thread: Some(thread),
        })
    }
}

fn listen(
    sock: UdpSocket,
    tx: Sender<(Ipv4Addr, Vec<u8>)>,
    bell: Arc<Doorbell>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let SocketAddr::V4(from) = from else {
            continue;
        };
        if tx.try_send((*from.ip(), buf[..n].to_vec())).is_ok() {
            bell.ring();
        }
    }
}

impl Drop for PeerListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
