//! What the meshgates of a swarm tell each other, and how a node knows
//! that it was another meshgate of its swarm that said it.
//!
//! Two kinds of sets, each sent once a second to every node's address on
//! UDP port [`DEFAULT_PORT`] (`node.announce_port`):
//!
//! - **Return paths.** A service that preserves the client's address
//!   needs, for each task, a way back from the task to the ingress node
//!   that forwarded the request (the `return_path` module); only the
//!   task's node can set it up. Every node announces the tasks on it whose
//!   return path is installed and the sandboxes it leads to; an ingress
//!   node forwards a task's connections with the client's address only
//!   while a fresh set from the task's own node names the task and its own
//!   sandbox. Otherwise (no meshgate there, it stopped or crashed, the
//!   return path failed) the task gets SNAT, as in Swarm: nothing is
//!   black-holed. A node that stops announces an empty set, so that
//!   ingress nodes fall back at once rather than after [`STALE_AFTER`].
//! - **What only managers know** ([`ServiceWord`]). A worker's Docker
//!   shows no service labels, no protocols of published ports and no
//!   task being drained. A meshgate on a manager announces them for every
//!   published service; workers use the freshest such set instead of
//!   guessing from Docker's `DOCKER-INGRESS` rules (`docker::ingress_view`).
//!
//! Every datagram is signed with a key every node shares (HMAC-SHA-256,
//! [`format`](mod@format)), carries its sender's epoch and sequence number against
//! replay, and stays under [`format::MAX_DATAGRAM`] bytes, a large set
//! being split. Without a key nothing is sent or believed: every task gets
//! SNAT and workers read the rules. [`verify`] says in which order a
//! datagram is checked, so that a flood costs little; while refusals come
//! in a node's name, the last good set of that node is kept up to
//! [`GRACE`] rather than [`STALE_AFTER`], so that a flood that drowns the
//! real announcements does not turn preserved connections into resets.

pub mod format;
pub mod verify;

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::dataplane::desc::{ClientIp, OutlierDetection, Protocol};
use crate::wire::MacAddr;

pub use format::{Keys, Refusal, Sender};
pub use verify::Verifier;

/// The UDP port of announcements, on every node's address.
pub const DEFAULT_PORT: u16 = 7949;
/// How often a node announces.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// A set older than this no longer counts.
pub const STALE_AFTER: Duration = Duration::from_secs(3);
/// ... unless datagrams in its sender's name were refused in the last
/// [`STALE_AFTER`]: then it counts up to this long.
pub const GRACE: Duration = Duration::from_secs(30);
/// Where the stack file's Docker secret puts the key, and so where
/// `meshgate run --swarm` looks for it when none is configured.
pub const DEFAULT_KEY_FILE: &str = "/run/secrets/meshgate_announce_key";

/// The key file to sign with: `node.announce_key` when given, else in
/// swarm mode the stack file's Docker secret ([`DEFAULT_KEY_FILE`]) when
/// it is there; `None`: no announcements.
pub fn key_file(configured: Option<&std::path::Path>, swarm: bool) -> Option<std::path::PathBuf> {
    match configured {
        Some(p) => Some(p.to_path_buf()),
        None if swarm && std::path::Path::new(DEFAULT_KEY_FILE).exists() => {
            Some(DEFAULT_KEY_FILE.into())
        }
        None => None,
    }
}

/// One node's return paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReturnPaths {
    /// Tasks on that node whose return path is installed.
    pub tasks: BTreeSet<Ipv4Addr>,
    /// The ingress sandboxes those return paths lead to.
    pub sandboxes: BTreeSet<Ipv4Addr>,
    /// Those of the tasks whose own container asks for the client's
    /// address (a container label), whatever their service says: a swarm
    /// whose managers run no meshgate has no other way to say it.
    pub asks: BTreeSet<Ipv4Addr>,
    /// The sender's own ingress sandbox and its MAC, as its Docker says.
    pub own_sandbox: Option<(Ipv4Addr, MacAddr)>,
}

/// What a manager knows of one published service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceWord {
    pub name: String,
    /// (published, target, protocol) of each port published in ingress mode.
    pub ports: Vec<(u16, u16, Protocol)>,
    pub client_ip: ClientIp,
    pub outlier_detection: OutlierDetection,
    /// Its tasks being stopped, or all of them when it was removed.
    pub drained: BTreeSet<Ipv4Addr>,
}

/// One set's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    ReturnPaths(ReturnPaths),
    Services(Vec<ServiceWord>),
}

/// Whether a set from `node` heard at `at` still counts at `now`.
fn fresh(at: Instant, now: Instant, last_refusal: Option<Instant>) -> bool {
    let age = now.saturating_duration_since(at);
    let under_fire = last_refusal.is_some_and(|t| now.saturating_duration_since(t) < STALE_AFTER);
    age < STALE_AFTER || (under_fire && age < GRACE)
}

/// The return paths an ingress node has heard of.
#[derive(Debug, Default)]
pub struct Peers {
    heard: HashMap<Ipv4Addr, (Instant, ReturnPaths)>,
    /// Every node's own sandbox and its MAC, task node or not (an ingress
    /// node with no task is the one a task node needs it of).
    sandbox_macs: HashMap<Ipv4Addr, (Instant, Ipv4Addr, MacAddr)>,
    /// Sets of nodes that run none of the tables' tasks (a node whose last
    /// task moved away says so once more): not kept.
    pub ignored: u64,
    /// Sets taken.
    pub accepted: u64,
}

impl Peers {
    /// Takes a signed set of `node`'s; `task_node` says whether an
    /// address is a task's node in the tables. True when what is ready
    /// changed.
    pub fn take(
        &mut self,
        node: Ipv4Addr,
        rp: ReturnPaths,
        now: Instant,
        task_node: impl Fn(Ipv4Addr) -> bool,
    ) -> bool {
        if let Some((sandbox, mac)) = rp.own_sandbox {
            self.sandbox_macs.insert(node, (now, sandbox, mac));
        }
        if !task_node(node) {
            self.ignored += 1;
            return self.heard.remove(&node).is_some();
        }
        self.accepted += 1;
        let changed = self.heard.get(&node).is_none_or(|(_, old)| *old != rp);
        self.heard.insert(node, (now, rp));
        changed
    }

    /// Forgets sets that no longer count; true when one was forgotten.
    pub fn expire(
        &mut self,
        now: Instant,
        last_refusal: impl Fn(Ipv4Addr) -> Option<Instant>,
    ) -> bool {
        let before = self.heard.len();
        self.heard
            .retain(|n, (at, _)| fresh(*at, now, last_refusal(*n)));
        self.sandbox_macs
            .retain(|n, (at, _, _)| fresh(*at, now, last_refusal(*n)));
        self.heard.len() != before
    }

    /// The sandboxes' MACs their own nodes announce.
    pub fn sandbox_macs(&self) -> std::collections::BTreeMap<Ipv4Addr, MacAddr> {
        self.sandbox_macs
            .values()
            .map(|&(_, sandbox, mac)| (sandbox, mac))
            .collect()
    }

    /// Nodes whose set counts.
    pub fn nodes(&self) -> usize {
        self.heard.len()
    }

    /// Whether `task`'s own container asks for the client's address, as
    /// its node says.
    pub fn asks(&self, node: Ipv4Addr, task: Ipv4Addr) -> bool {
        self.heard
            .get(&node)
            .is_some_and(|(_, a)| a.asks.contains(&task))
    }

    /// Whether `task` on `node` has a return path to `sandbox`.
    pub fn ready(&self, node: Ipv4Addr, task: Ipv4Addr, sandbox: Ipv4Addr) -> bool {
        self.heard
            .get(&node)
            .is_some_and(|(_, a)| a.tasks.contains(&task) && a.sandboxes.contains(&sandbox))
    }
}

/// What managers announced of services.
#[derive(Debug, Default)]
pub struct ManagerWords {
    heard: HashMap<Ipv4Addr, (Instant, Vec<ServiceWord>)>,
}

impl ManagerWords {
    /// Takes a manager's set; true when the word in force changed.
    pub fn take(&mut self, node: Ipv4Addr, word: Vec<ServiceWord>, now: Instant) -> bool {
        let before = self.current().cloned();
        self.heard.insert(node, (now, word));
        self.current() != before.as_ref()
    }

    /// Forgets sets that no longer count; true when the word in force
    /// changed.
    pub fn expire(
        &mut self,
        now: Instant,
        last_refusal: impl Fn(Ipv4Addr) -> Option<Instant>,
    ) -> bool {
        let before = self.current().cloned();
        self.heard
            .retain(|n, (at, _)| fresh(*at, now, last_refusal(*n)));
        self.current() != before.as_ref()
    }

    /// The newest manager's set that counts. Managers read the same Raft
    /// store, so they differ only for the moment one has read a change
    /// and another not yet; the newest is the likelier to have it.
    pub fn current(&self) -> Option<&Vec<ServiceWord>> {
        self.heard
            .values()
            .max_by_key(|(at, _)| *at)
            .map(|(_, w)| w)
    }
}

#[cfg(test)]
mod tests;
