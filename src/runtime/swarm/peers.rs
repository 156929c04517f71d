//! The receiving side of [`crate::announce`]: a thread that takes the
//! other nodes' announcements on `node.address:node.announce_port`, checks
//! them ([`Verifier`]: the cheap checks, a budget per node, the tag,
//! replay), and hands whole signed sets to the control thread, which
//! decides what they mean. A flood stays in this thread: nothing unsigned
//! reaches the control thread.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender};

use crate::announce::{Content, Keys, Refusal, Verifier};
use crate::runtime::doorbell::Doorbell;

/// Sets waiting for the control thread, at most; each node sends two a
/// second, so this is only reached when the control thread is stuck.
const BACKLOG: usize = 1024;
/// How often the listener takes a fresh copy of the known nodes and
/// publishes its counters.
const REFRESH: Duration = Duration::from_millis(200);

/// The addresses announcements are taken from: the tables' task nodes
/// (the control thread's) and the swarm's nodes (the agent's, from the
/// ingress network: managers with no task among them).
#[derive(Debug, Default)]
pub struct KnownNodes {
    pub task_nodes: BTreeSet<Ipv4Addr>,
    pub swarm_nodes: BTreeSet<Ipv4Addr>,
}

impl KnownNodes {
    fn all(&self) -> BTreeSet<Ipv4Addr> {
        self.task_nodes.union(&self.swarm_nodes).copied().collect()
    }
}

/// What the listener has counted, and when each node's address was last
/// refused.
#[derive(Debug, Clone, Default)]
pub struct Heard {
    pub refused: BTreeMap<Refusal, u64>,
    pub datagrams: u64,
    pub sets: u64,
    pub last_refusal: BTreeMap<Ipv4Addr, Instant>,
}

/// The running listener; dropping it stops the thread.
pub struct PeerListener {
    pub sets: Receiver<(Ipv4Addr, Content)>,
    pub known: Arc<Mutex<KnownNodes>>,
    pub heard: Arc<Mutex<Heard>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PeerListener {
    pub fn start(
        addr: Ipv4Addr,
        port: u16,
        keys: Keys,
        bell: Arc<Doorbell>,
    ) -> std::io::Result<PeerListener> {
        let sock = UdpSocket::bind((addr, port))?;
        // Short, so that a stop is seen soon.
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let (tx, sets) = crossbeam::channel::bounded(BACKLOG);
        let stop = Arc::new(AtomicBool::new(false));
        let known = Arc::new(Mutex::new(KnownNodes::default()));
        let heard = Arc::new(Mutex::new(Heard::default()));
        let l = Listen {
            sock,
            verifier: Verifier::new(keys),
            tx,
            bell,
            known: known.clone(),
            heard: heard.clone(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("mg-announce".into())
            .spawn(move || l.run())?;
        Ok(PeerListener {
            sets,
            known,
            heard,
            stop,
            thread: Some(thread),
        })
    }

    /// What the listener counted, as of its last refresh.
    pub fn heard(&self) -> Heard {
        self.heard.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

struct Listen {
    sock: UdpSocket,
    verifier: Verifier,
    tx: Sender<(Ipv4Addr, Content)>,
    bell: Arc<Doorbell>,
    known: Arc<Mutex<KnownNodes>>,
    heard: Arc<Mutex<Heard>>,
    stop: Arc<AtomicBool>,
}

impl Listen {
    fn run(mut self) {
        // A real datagram is under MAX_DATAGRAM; one more byte tells a
        // longer one (cut by recv) from one of exactly that size.
        let mut buf = vec![0u8; crate::announce::format::MAX_DATAGRAM + 1];
        let mut known = BTreeSet::new();
        let mut refreshed: Option<Instant> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if refreshed.is_none_or(|t| now.duration_since(t) >= REFRESH) {
                known = self.known.lock().unwrap_or_else(|e| e.into_inner()).all();
                self.verifier.retain_known(|n| known.contains(&n));
                self.publish();
                refreshed = Some(now);
            }
            let Ok((n, SocketAddr::V4(from))) = self.sock.recv_from(&mut buf) else {
                continue;
            };
            let got = self
                .verifier
                .receive(*from.ip(), &buf[..n], Instant::now(), |a| {
                    known.contains(&a)
                });
            if let Ok(Some(set)) = got {
                if self.tx.try_send(set).is_ok() {
                    self.bell.ring();
                }
                self.publish();
            }
        }
    }

    fn publish(&self) {
        let v = &self.verifier;
        *self.heard.lock().unwrap_or_else(|e| e.into_inner()) = Heard {
            refused: v.refused.clone(),
            datagrams: v.datagrams,
            sets: v.sets,
            last_refusal: v.last_refusals().collect(),
        };
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
