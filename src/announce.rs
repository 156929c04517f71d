//! What the meshgates of a swarm tell each other: which tasks have a
//! return path to which ingress sandboxes.
//!
//! A service that preserves the client's address needs, for each task, a
//! way back from the task to the ingress node that forwarded the request
//! (the `return_path` module); only the task's node can set it up. So every
//! node's meshgate *announces*, once a second and to every node, the
//! tasks on it whose return path is installed and the sandboxes it leads
//! to; every ingress node forwards a task's connections with the client's
//! address only while a fresh announcement from the task's own node names
//! the task and its own sandbox. Otherwise (the node runs no meshgate, its
//! meshgate stopped or crashed, the return path failed) the task gets
//! SNAT, as in Swarm: nothing is black-holed. A node that stops announces
//! an empty list, so that ingress nodes fall back at once instead of
//! after [`STALE_AFTER`].
//!
//! An announcement is a small JSON datagram on UDP port [`DEFAULT_PORT`]
//! (`node.announce_port`) between node addresses. It is accepted only from
//! the node it speaks for, and only from a node the tables name as a
//! task's node; it carries a version, and one of another version is
//! ignored with a note in the log. Like Swarm's own gossip (port 7946),
//! it trusts the underlay network: anyone who can send from a node's
//! address can switch that node's tasks between preserve and SNAT.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// The UDP port of announcements, on every node's address.
pub const DEFAULT_PORT: u16 = 7949;
/// The announcements' format version.
pub const VERSION: u32 = 1;
/// How often a node announces.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// An announcement older than this no longer counts.
pub const STALE_AFTER: Duration = Duration::from_secs(3);

/// One node's announcement.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Announcement {
    pub version: u32,
    /// The announcing node's address (its VTEP).
    pub node: Ipv4Addr,
    /// Tasks on that node whose return path is installed.
    pub tasks: BTreeSet<Ipv4Addr>,
    /// The ingress sandboxes those return paths lead to.
    pub sandboxes: BTreeSet<Ipv4Addr>,
}

impl Announcement {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an announcement serializes")
    }

    /// Decodes a datagram; the error says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<Announcement, String> {
        #[derive(serde::Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version =
            serde_json::from_slice(bytes).map_err(|e| format!("not an announcement: {e}"))?;
        if v.version != VERSION {
            return Err(format!(
                "announcement of version {} (this meshgate speaks {VERSION})",
                v.version
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("malformed announcement: {e}"))
    }
}

/// The announcements an ingress node has heard.
#[derive(Debug, Default)]
pub struct Peers {
    heard: HashMap<Ipv4Addr, (Instant, Announcement)>,
    /// Datagrams refused (malformed, another version, a sender speaking
    /// for another node).
    pub refused: u64,
    /// Announcements of nodes that run none of the tables' tasks (a node
    /// whose last task moved away says so once more): not kept.
    pub ignored: u64,
    /// Announcements taken.
    pub accepted: u64,
}

impl Peers {
    /// Takes a datagram from `from`; `task_node` says whether an address
    /// is a task's node in the tables. True when what is ready changed.
    pub fn receive(
        &mut self,
        from: Ipv4Addr,
        bytes: &[u8],
        now: Instant,
        task_node: impl Fn(Ipv4Addr) -> bool,
    ) -> Result<bool, String> {
        let refuse = |s: &mut Self, why: String| {
            s.refused += 1;
            Err(why)
        };
        let a = match Announcement::decode(bytes) {
            Ok(a) => a,
            Err(e) => return refuse(self, format!("from {from}: {e}")),
        };
        if a.node != from {
            return refuse(self, format!("from {from}: speaks for {}, refused", a.node));
        }
        if !task_node(from) {
            self.ignored += 1;
            return Ok(self.heard.remove(&from).is_some());
        }
        self.accepted += 1;
        let changed = self
            .heard
            .get(&from)
            .is_none_or(|(_, old)| (&old.tasks, &old.sandboxes) != (&a.tasks, &a.sandboxes));
        self.heard.insert(from, (now, a));
        Ok(changed)
    }

    /// Forgets stale announcements; true when one was forgotten.
    pub fn expire(&mut self, now: Instant) -> bool {
        let before = self.heard.len();
        self.heard
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < STALE_AFTER);
        self.heard.len() != before
    }

    /// Nodes whose announcement is fresh.
    pub fn nodes(&self) -> usize {
        self.heard.len()
    }

    /// Whether `task` on `node` has a return path to `sandbox`.
    pub fn ready(&self, node: Ipv4Addr, task: Ipv4Addr, sandbox: Ipv4Addr) -> bool {
        self.heard
            .get(&node)
            .is_some_and(|(_, a)| a.tasks.contains(&task) && a.sandboxes.contains(&sandbox))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
    const TASK: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 4);
    const SBOX: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 2);

    fn announcement(tasks: &[Ipv4Addr]) -> Announcement {
        Announcement {
            version: VERSION,
            node: NODE,
            tasks: tasks.iter().copied().collect(),
            sandboxes: [SBOX].into_iter().collect(),
        }
    }

    #[test]
    fn a_task_is_ready_while_its_own_node_says_so() {
        let mut p = Peers::default();
        let t0 = Instant::now();
        let yes = |_| true;
        assert!(!p.ready(NODE, TASK, SBOX));
        assert_eq!(
            p.receive(NODE, &announcement(&[TASK]).encode(), t0, yes),
            Ok(true)
        );
        assert!(p.ready(NODE, TASK, SBOX));
        assert_eq!((p.accepted, p.nodes()), (1, 1));
        assert!(
            !p.ready(NODE, TASK, Ipv4Addr::new(198, 18, 128, 3)),
            "another sandbox"
        );
        assert!(
            !p.ready(Ipv4Addr::new(198, 18, 0, 12), TASK, SBOX),
            "another node"
        );
        // The same again changes nothing; staleness ends it.
        let t1 = t0 + INTERVAL;
        assert_eq!(
            p.receive(NODE, &announcement(&[TASK]).encode(), t1, yes),
            Ok(false)
        );
        assert!(!p.expire(t1 + Duration::from_secs(1)));
        assert!(p.expire(t1 + STALE_AFTER));
        assert!(!p.ready(NODE, TASK, SBOX));
        // An empty announcement (a node that stops) ends it at once.
        p.receive(NODE, &announcement(&[TASK]).encode(), t1, yes)
            .unwrap();
        assert_eq!(
            p.receive(NODE, &announcement(&[]).encode(), t1, yes),
            Ok(true)
        );
        assert!(!p.ready(NODE, TASK, SBOX));
    }

    #[test]
    fn strangers_and_nonsense_are_refused_and_counted() {
        let mut p = Peers::default();
        let now = Instant::now();
        let other = Ipv4Addr::new(198, 18, 0, 99);
        let e = p.receive(other, &announcement(&[TASK]).encode(), now, |_| true);
        assert!(e.unwrap_err().contains("speaks for"));
        // Not a task's node: not kept, not an error.
        assert_eq!(
            p.receive(NODE, &announcement(&[TASK]).encode(), now, |n| n != NODE),
            Ok(false)
        );
        assert_eq!(p.ignored, 1);
        let e = p.receive(NODE, b"{\"version\": 2, \"node\": 1}", now, |_| true);
        assert!(e.unwrap_err().contains("version 2"));
        let e = p.receive(NODE, b"\xff\x00", now, |_| true);
        assert!(e.unwrap_err().contains("not an announcement"));
        assert_eq!(p.refused, 3);
        assert!(!p.ready(NODE, TASK, SBOX));
    }
}
