//! The description the data plane is built from: this node's identity on
//! the underlay and the ingress overlay, the flows' timeouts, and the
//! services with their published ports and tasks, with the value types in
//! them. The data plane owns it; the configuration file and the swarm
//! source (`control`) validate their input into it
//! (`Config::table_desc`), so nothing here imports them.

use std::fmt;
use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::wire::MacAddr;

/// Everything [`Snapshot::build`](super::tables::Snapshot::build) reads.
#[derive(Debug, Clone, Copy)]
pub struct TableDesc<'a> {
    /// The node address: published ports answer on it; also its VTEP.
    pub node_addr: Ipv4Addr,
    /// The node's IPv6 address, when published ports answer IPv6 clients.
    pub node_addr6: Option<std::net::Ipv6Addr>,
    /// This node's ingress-sandbox address and MAC on the overlay.
    pub overlay_addr: Ipv4Addr,
    pub overlay_mac: MacAddr,
    pub vni: u32,
    pub vxlan_port: u16,
    /// Largest inner IPv4 packet.
    pub overlay_mtu: u16,
    pub timeouts: Timeouts,
    /// In the order their marks are given (0x100 up, for new names).
    pub services: &'a [Service],
}

/// Transport protocol of a published port.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => crate::wire::ipv4::protocol::TCP,
            Protocol::Udp => crate::wire::ipv4::protocol::UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// How a service picks a task for a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// Round robin over tasks with a non-zero weight: Swarm's only choice.
    #[default]
    Rr,
    /// Weighted round robin.
    Wrr,
    /// Least connections (active flows, weighted).
    Lc,
    /// Maglev consistent hashing of the client's address and port: several
    /// ingress nodes choose the same task without sharing state.
    Maglev,
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Lc => "lc",
            Scheduler::Maglev => "maglev",
        })
    }
}

/// The source address a service's tasks see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientIp {
    /// The ingress sandbox's address and a port of its own (SNAT), as
    /// Swarm's mesh does: replies find their way back by routing alone.
    #[default]
    Snat,
    /// The client's own address and port (DNAT only), for tasks whose node
    /// has set up their return path to this node; others fall back to
    /// `Snat`.
    Preserve,
}

impl fmt::Display for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientIp::Snat => "snat",
            ClientIp::Preserve => "preserve",
        })
    }
}

/// Whether passive health checks a service's tasks (outlier detection,
/// `crate::dataplane::health`): file key `outlier_detection`, Docker label
/// `meshgate.outlier-detection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutlierDetection {
    /// Tasks that refuse or leave new connections unanswered are taken
    /// out of new-flow selection for a while, and a refused client's
    /// retransmission goes to a healthy task.
    #[default]
    On,
    /// Every eligible task gets new flows whatever it answers, and its
    /// resets reach the clients as they are.
    Off,
}

impl fmt::Display for OutlierDetection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutlierDetection::On => "on",
            OutlierDetection::Off => "off",
        })
    }
}

/// An IPv4 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Net {
    pub fn mask(&self) -> u32 {
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix_len)
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == u32::from(self.addr) & self.mask()
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl std::str::FromStr for Ipv4Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').ok_or_else(|| {
            format!("`{s}` is not a prefix (expected ADDRESS/LENGTH, like 198.18.128.0/24)")
        })?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("`{a}` is not an IPv4 address"))?;
        let prefix_len: u8 = l
            .parse()
            .ok()
            .filter(|&l| l <= 32)
            .ok_or_else(|| format!("`{l}` is not a prefix length (0 to 32)"))?;
        let net = Ipv4Net { addr, prefix_len };
        if net.network() != addr {
            return Err(format!(
                "`{s}` has host bits set; the network is {}/{}",
                net.network(),
                prefix_len
            ));
        }
        Ok(net)
    }
}

/// Idle timeouts of flows, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn: u32,
    pub tcp_established: u32,
    pub tcp_closing: u32,
    pub tcp_close: u32,
    pub udp: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn: 60,
            tcp_established: 3600,
            tcp_closing: 120,
            tcp_close: 10,
            udp: 300,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Publish {
    pub published: u16,
    pub target: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Task {
    pub address: Ipv4Addr,
    /// The underlay address of the node (VTEP) that runs the task.
    pub node: Ipv4Addr,
    #[serde(serialize_with = "ser_display")]
    pub mac: MacAddr,
    pub weight: u32,
    /// The task's replies to a client's own address come back to this
    /// node (its node set up the return path): needed for `Preserve`.
    pub return_path: bool,
}

fn ser_display<S: serde::Serializer, T: fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Service {
    pub name: String,
    pub scheduler: Scheduler,
    pub client_ip: ClientIp,
    pub outlier_detection: OutlierDetection,
    pub publish: Vec<Publish>,
    pub tasks: Vec<Task>,
}
