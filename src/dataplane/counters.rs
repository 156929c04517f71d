//! Counters a worker keeps for itself (plain integers, no atomics on the
//! fast path) and ships to the control thread between batches.

use serde::Serialize;

macro_rules! reasons {
    ($( $(#[$m:meta])* $v:ident = $s:literal ),* $(,)?) => {
        /// Why a frame was not forwarded. Every drop has exactly one reason.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason { $( $(#[$m])* $v ),* }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[ $( DropReason::$v ),* ];
            pub const COUNT: usize = Self::ALL.len();
            /// The name used in statistics and metrics.
            pub fn name(self) -> &'static str {
                match self { $( DropReason::$v => $s ),* }
            }
        }
    };
}

reasons! {
    /// Shorter than its own headers say.
    Truncated = "truncated",
    /// An 802.1Q or 802.1ad tagged frame.
    Vlan = "vlan",
    /// Another EtherType than IPv4, or IPv6 when `node.address6` is not set.
    NotIpv4 = "not_ipv4",
    /// IPv6 with an extension header (meshgate forwards TCP and UDP right
    /// after the fixed header only).
    Ipv6ExtensionHeader = "ipv6_extension_header",
    /// ARP outside VXLAN (the kernel answers those; the XDP program passes them).
    Arp = "arp",
    /// IPv4 version, header length or total length impossible.
    IpMalformed = "ip_malformed",
    /// IPv4 options (IHL > 5).
    IpOptions = "ip_options",
    /// IPv4 header checksum wrong.
    IpChecksum = "ip_checksum",
    /// A fragment meshgate does not carry: of an IPv4 packet with options
    /// or in VXLAN (the outer packet fragmented), or of ICMP.
    IpFragment = "ip_fragment",
    /// A later fragment of a datagram whose first fragment has not passed
    /// (out of order, lost, expired, or evicted by too many in flight).
    FragmentNoFirst = "fragment_no_first",
    /// A fragment RFC 1858 warns of: a first fragment too short for its
    /// transport header, or a TCP fragment at offset 8 (over the header).
    FragmentMalformed = "fragment_malformed",
    /// TTL 0 or 1: forwarding would take it to zero.
    TtlExpired = "ttl_expired",
    /// Not addressed to the node address (or the overlay address inside VXLAN).
    NotForUs = "not_for_us",
    /// A protocol meshgate does not forward to this address.
    UnsupportedProtocol = "unsupported_protocol",
    /// No service publishes this port and protocol.
    NoService = "no_service",
    /// TCP or UDP header impossible (data offset, length).
    L4Malformed = "l4_malformed",
    /// TCP flag combination no stack sends (SYN+FIN, SYN+RST, none).
    TcpBadFlags = "tcp_bad_flags",
    /// A TCP segment other than a SYN for a connection meshgate does not know.
    TcpNoFlow = "tcp_no_flow",
    /// The service has no task taking new flows.
    NoTask = "no_task",
    /// The flow table is full of flows that cannot be evicted.
    FlowTableFull = "flow_table_full",
    /// No free SNAT port towards that task.
    SnatExhausted = "snat_exhausted",
    /// The next hop's MAC is not (yet) in the kernel's neighbour table.
    NoNeighbour = "no_neighbour",
    /// Larger than the overlay MTU (an ICMP "fragmentation needed" goes back when DF is set).
    TooBig = "too_big",
    /// The flow's task was removed (TCP clients get a reset).
    TaskGone = "task_gone",
    /// VXLAN header flags other than I.
    VxlanBadFlags = "vxlan_bad_flags",
    /// VXLAN with a VNI other than the ingress network's.
    VxlanWrongVni = "vxlan_wrong_vni",
    /// VXLAN from an address that runs none of the tasks.
    UnknownVtep = "unknown_vtep",
    /// Inner frame not addressed to the sandbox (MAC or IP).
    InnerNotForUs = "inner_not_for_us",
    /// A reply that matches no flow.
    ReplyNoFlow = "reply_no_flow",
    /// A reply that matches a flow but comes from another node than its task's.
    ReplyWrongVtep = "reply_wrong_vtep",
    /// ARP inside VXLAN that is not a request for the sandbox address.
    ArpNotForUs = "arp_not_for_us",
    /// The worker owning a reply's flow had no room in its hand-off queue.
    HandoffFull = "handoff_full",
    /// The TX ring was full.
    TxFull = "tx_full",
    /// A frame for or from a task on this node found no room on its way
    /// through the ingress sandbox's socket (its TX ring, or no free frame
    /// to copy it into).
    SandboxFull = "sandbox_full",
    /// No free frame for the second half of a packet split at the
    /// overlay's MTU (its first half left).
    NoFrame = "no_frame",
    /// An ICMP error that belongs to no flow.
    IcmpNoFlow = "icmp_no_flow",
    /// A task's reset in answer to a client's SYN, held back while another
    /// task of the service is healthy: the client's retransmitted SYN goes
    /// there (passive health, once per connection).
    TaskRefused = "task_refused",

    /// The buffer has no room in front of the frame for the outer headers
    /// (a setup error: the UMEM headroom is too small).
    NoHeadroom = "no_headroom",
}

/// Worker-local packet and byte counts of one task, in both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TaskCounters {
    /// Client -> task.
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Task -> client.
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Flows created.
    pub flows: u64,
}

impl TaskCounters {
    pub fn add(&mut self, o: &TaskCounters) {
        self.packets_in += o.packets_in;
        self.bytes_in += o.bytes_in;
        self.packets_out += o.packets_out;
        self.bytes_out += o.bytes_out;
        self.flows += o.flows;
    }
}

/// Events that are not drops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct EventCounters {
    pub rx: u64,
    pub tx: u64,
    pub forwarded: u64,
    pub replies: u64,
    pub arp_replies: u64,
    pub icmp_sent: u64,
    pub resets_sent: u64,
    pub flows_created: u64,
    pub flows_expired: u64,
    pub flows_evicted: u64,
    pub flows_ended: u64,
    pub handoffs: u64,
    /// Frames received from and sent on the ingress sandbox's interface.
    pub sandbox_rx: u64,
    pub sandbox_tx: u64,
    /// Of `forwarded`, `replies` and `flows_created`: those of IPv6
    /// clients (`node.address6`).
    #[serde(default)]
    pub ipv6_forwarded: u64,
    #[serde(default)]
    pub ipv6_replies: u64,
    #[serde(default)]
    pub ipv6_flows_created: u64,
    /// Passive health: tasks taken out of new-flow selection, ejections
    /// the service's cap (half its tasks) refused, and retransmitted SYNs
    /// sent to another task than their first's.
    #[serde(default)]
    pub tasks_ejected: u64,
    #[serde(default)]
    pub ejections_capped: u64,
    #[serde(default)]
    pub syns_moved: u64,
    /// Fragments of clients' datagrams forwarded (first and later ones),
    /// and of tasks' datagrams delivered back.
    #[serde(default)]
    pub fragments_forwarded: u64,
    #[serde(default)]
    pub fragments_replied: u64,
    /// Packets larger than the overlay's MTU, without DF, sent as two
    /// fragments.
    #[serde(default)]
    pub fragments_split: u64,
    /// Datagrams in fragments forgotten before their time because too
    /// many were in flight (`crate::dataplane::fragments`).
    #[serde(default)]
    pub fragments_evicted: u64,
}

impl EventCounters {
    pub fn add(&mut self, o: &EventCounters) {
        self.rx += o.rx;
        self.tx += o.tx;
        self.forwarded += o.forwarded;
        self.replies += o.replies;
        self.arp_replies += o.arp_replies;
        self.icmp_sent += o.icmp_sent;
        self.resets_sent += o.resets_sent;
        self.flows_created += o.flows_created;
        self.flows_expired += o.flows_expired;
        self.flows_evicted += o.flows_evicted;
        self.flows_ended += o.flows_ended;
        self.handoffs += o.handoffs;
        self.sandbox_rx += o.sandbox_rx;
        self.sandbox_tx += o.sandbox_tx;
        self.ipv6_forwarded += o.ipv6_forwarded;
        self.ipv6_replies += o.ipv6_replies;
        self.ipv6_flows_created += o.ipv6_flows_created;
        self.tasks_ejected += o.tasks_ejected;
        self.ejections_capped += o.ejections_capped;
        self.syns_moved += o.syns_moved;
        self.fragments_forwarded += o.fragments_forwarded;
        self.fragments_replied += o.fragments_replied;
        self.fragments_split += o.fragments_split;
        self.fragments_evicted += o.fragments_evicted;
    }

    /// Counts what a recorded failure did (`super::health`).
    pub fn count_health(&mut self, o: super::health::Outcome) {
        use super::health::Outcome;
        match o {
            Outcome::Counted => {}
            Outcome::Ejected => self.tasks_ejected += 1,
            Outcome::Capped => self.ejections_capped += 1,
        }
    }
}

/// Drop counts by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropCounters(pub [u64; DropReason::COUNT]);

impl Default for DropCounters {
    fn default() -> Self {
        DropCounters([0; DropReason::COUNT])
    }
}

impl DropCounters {
    #[inline]
    pub fn inc(&mut self, r: DropReason) {
        self.0[r as usize] += 1;
    }

    pub fn get(&self, r: DropReason) -> u64 {
        self.0[r as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn add(&mut self, o: &DropCounters) {
        for (a, b) in self.0.iter_mut().zip(o.0.iter()) {
            *a += b;
        }
    }

    /// Non-zero reasons with their names.
    pub fn nonzero(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (r.name(), self.get(*r)))
            .filter(|(_, n)| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for r in DropReason::ALL {
            assert!(seen.insert(r.name()));
            assert!(
                r.name()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            );
        }
        assert_eq!(
            DropReason::ALL[DropReason::TxFull as usize],
            DropReason::TxFull
        );
    }
}
