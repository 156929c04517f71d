//! rtnetlink: the ingress interface's facts, the kernel's neighbour table and
//! routes, resolution requests, and change notifications; and, for the
//! return path of preserved client addresses, policy-routing rules and the
//! routes of their tables.
//!
//! meshgate never guesses a MAC address: next hops come from the kernel's
//! neighbour table. A missing entry is resolved *by the kernel*: an
//! `RTM_NEWNEIGH` with `NTF_USE` makes it send ARP as it would for its own
//! traffic, and the answer arrives as a neighbour notification.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkInfo, LinkMessage, LinkXdp};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage, RulePortRange};
use netlink_packet_route::{AddressFamily, IpProtocol, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::config::Ipv4Net;
use crate::dataplane::tables::{Neighbours, Route};
use crate::wire::MacAddr;

/// Facts about a network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkFacts {
    pub index: u32,
    pub mac: MacAddr,
    pub rx_queues: u32,
    pub mtu: u32,
    /// The link's kind (`veth`, `bridge`, `vxlan`, …) for a virtual link;
    /// `None` for a device with a driver of its own (a NIC).
    pub kind: Option<String>,
    /// The id of the XDP program attached through netlink (`ip link set
    /// … xdp`), native or generic, if any.
    pub xdp_program: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink: {0}")]
    Io(#[from] io::Error),
    #[error("netlink: cannot decode the kernel's answer: {0}")]
    Decode(String),
    #[error(
        "interface `{0}` does not exist in this network namespace (check node.interface and `ip link`)"
    )]
    NoSuchInterface(String),
    #[error("netlink request failed: {0}")]
    Kernel(io::Error),
}

/// What [`Rtnl::route_get`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteLookup {
    pub gateway: Option<Ipv4Addr>,
    /// The output interface's index.
    pub oif: Option<u32>,
    /// The preferred source address.
    pub source: Option<Ipv4Addr>,
}

/// A request/response rtnetlink socket.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_LINK: u32 = 0x1;

impl Rtnl {
    pub fn new() -> Result<Rtnl, NetlinkError> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { sock, seq: 1 })
    }

    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        self.seq = self.seq.wrapping_add(1);
        header.sequence_number = self.seq;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        let mut out = Vec::new();
        let mut rbuf = vec![0u8; 1 << 16];
        loop {
            let n = self.sock.recv(&mut &mut rbuf[..], 0)?;
            let mut off = 0;
            while off < n {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rbuf[off..n])
                    .map_err(|e| NetlinkError::Decode(e.to_string()))?;
                let len = m.header.length as usize;
                if m.header.sequence_number == self.seq {
                    match m.payload {
                        NetlinkPayload::Done(_) => return Ok(out),
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(out),
                                Some(c) => Err(NetlinkError::Kernel(io::Error::from_raw_os_error(
                                    -c.get(),
                                ))),
                            };
                        }
                        NetlinkPayload::InnerMessage(i) => {
                            out.push(i);
                            if flags & NLM_F_DUMP != NLM_F_DUMP && flags & NLM_F_ACK == 0 {
                                return Ok(out);
                            }
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
    }

    /// Every interface of this network namespace (of the calling
    /// thread's), by name.
    pub fn links(&mut self) -> Result<Vec<(String, LinkFacts)>, NetlinkError> {
        let msgs = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewLink(l) = m else {
                continue;
            };
            let mut facts = LinkFacts {
                index: l.header.index,
                mac: MacAddr::ZERO,
                rx_queues: 1,
                mtu: 1500,
                kind: None,
                xdp_program: None,
            };
            let mut name = String::new();
            for a in &l.attributes {
                match a {
                    LinkAttribute::IfName(n) => name = n.clone(),
                    LinkAttribute::Address(b) if b.len() == 6 => {
                        facts.mac = MacAddr(b[..6].try_into().expect("6 bytes"))
                    }
                    LinkAttribute::NumRxQueues(q) => facts.rx_queues = *q,
                    LinkAttribute::Mtu(m) => facts.mtu = *m,
                    LinkAttribute::Xdp(xdp) => {
                        facts.xdp_program = xdp.iter().find_map(|x| match x {
                            LinkXdp::ProgId(id) if *id != 0 => Some(*id),
                            _ => None,
                        })
                    }
                    LinkAttribute::LinkInfo(infos) => {
                        facts.kind = infos.iter().find_map(|i| match i {
                            LinkInfo::Kind(k) => Some(k.to_string()),
                            _ => None,
                        })
                    }
                    _ => {}
                }
            }
            out.push((name, facts));
        }
        Ok(out)
    }

    /// Facts about interface `name`.
    pub fn link(&mut self, name: &str) -> Result<LinkFacts, NetlinkError> {
        let Some((_, mut facts)) = self.links()?.into_iter().find(|(n, _)| n == name) else {
            return Err(NetlinkError::NoSuchInterface(name.to_string()));
        };
        // Active queues, where sysfs shows this interface (it shows the
        // mounter's namespace, checked by index).
        if let Some(q) = active_rx_queues(name, facts.index) {
            facts.rx_queues = q;
        }
        Ok(facts)
    }

    /// Attaches the XDP program `fd` to `ifindex` through netlink, as `ip
    /// link set … xdp` does: unlike a BPF link, the attachment outlives the
    /// process, so that a restarted meshgate finds its program still
    /// keeping published ports from the kernel. With `expected`, only if
    /// that program is still the one attached (`XDP_FLAGS_REPLACE`: two
    /// processes cannot both win); without, only if none is
    /// (`XDP_FLAGS_UPDATE_IF_NOEXIST`). `fd` = -1 detaches.
    pub fn set_xdp(
        &mut self,
        ifindex: u32,
        fd: i32,
        mode_flags: u32,
        expected: Option<i32>,
    ) -> Result<(), NetlinkError> {
        const UPDATE_IF_NOEXIST: u32 = 1 << 0;
        const REPLACE: u32 = 1 << 4;
        let mut l = LinkMessage::default();
        l.header.index = ifindex;
        let mut xdp = vec![LinkXdp::Fd(fd)];
        match expected {
            Some(old) => {
                xdp.push(LinkXdp::Flags(mode_flags | REPLACE));
                xdp.push(LinkXdp::ExpectedFd(old as u32));
            }
            None => xdp.push(LinkXdp::Flags(mode_flags | UPDATE_IF_NOEXIST)),
        }
        l.attributes.push(LinkAttribute::Xdp(xdp));
        self.request(RouteNetlinkMessage::SetLink(l), NLM_F_REQUEST | NLM_F_ACK)?;
        Ok(())
    }

    /// The IPv4 neighbours of `ifindex` with a usable link-layer address.
    pub fn neighbours(&mut self, ifindex: u32) -> Result<Vec<(Ipv4Addr, MacAddr)>, NetlinkError> {
        let mut q = NeighbourMessage::default();
        q.header.family = AddressFamily::Inet;
        let msgs = self.request(
            RouteNetlinkMessage::GetNeighbour(q),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => usable_neighbour(&n, ifindex),
                _ => None,
            })
            .collect())
    }

    /// The main table's IPv4 routes out of `ifindex`.
    pub fn routes(&mut self, ifindex: u32) -> Result<Vec<Route>, NetlinkError> {
        let mut q = RouteMessage::default();
        q.header.address_family = AddressFamily::Inet;
        let msgs = self.request(RouteNetlinkMessage::GetRoute(q), NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            if r.header.kind != RouteType::Unicast || r.header.table != RouteHeader::RT_TABLE_MAIN {
                continue;
            }
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut gw = None;
            let mut oif = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                    RouteAttribute::Oif(o) => oif = Some(*o),
                    _ => {}
                }
            }
            if oif == Some(ifindex) {
                out.push(Route {
                    dst: Ipv4Net {
                        addr: dst,
                        prefix_len: r.header.destination_prefix_length,
                    },
                    gateway: gw,
                });
            }
        }
        Ok(out)
    }

    /// Reads neighbours and routes of `ifindex` into a table.
    pub fn neighbour_table(&mut self, ifindex: u32) -> Result<Neighbours, NetlinkError> {
        let mut n = Neighbours::default();
        for (ip, mac) in self.neighbours(ifindex)? {
            n.entries.insert(ip, mac);
        }
        for r in self.routes(ifindex)? {
            n.insert_route(r);
        }
        Ok(n)
    }

    /// The index of the interface that holds `addr`, if one does.
    pub fn interface_with(&mut self, addr: Ipv4Addr) -> Result<Option<u32>, NetlinkError> {
        let mut q = AddressMessage::default();
        q.header.family = AddressFamily::Inet;
        let msgs = self.request(
            RouteNetlinkMessage::GetAddress(q),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        Ok(msgs.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a)
                if a.attributes.iter().any(
                    |at| matches!(at, AddressAttribute::Address(IpAddr::V4(v)) if *v == addr),
                ) =>
            {
                Some(a.header.index)
            }
            _ => None,
        }))
    }

    /// The global unicast IPv6 addresses of interface `ifindex` (no
    /// link-local, unique-local or deprecated-by-scope ones), as the
    /// kernel lists them.
    pub fn global_ipv6(&mut self, ifindex: u32) -> Result<Vec<std::net::Ipv6Addr>, NetlinkError> {
        let mut q = AddressMessage::default();
        q.header.family = AddressFamily::Inet6;
        let msgs = self.request(
            RouteNetlinkMessage::GetAddress(q),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == ifindex => {
                    a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Address(IpAddr::V6(v)) => Some(*v),
                        _ => None,
                    })
                }
                _ => None,
            })
            .filter(|v| {
                let first = v.segments()[0];
                // fe80::/10 link-local, fc00::/7 unique local, multicast,
                // loopback: no client from outside reaches those.
                first & 0xffc0 != 0xfe80
                    && first & 0xfe00 != 0xfc00
                    && !v.is_multicast()
                    && !v.is_loopback()
                    && !v.is_unspecified()
            })
            .collect())
    }

    /// The IPv4 policy-routing rules as (priority, fwmark, table).
    pub fn rules(&mut self) -> Result<Vec<(u32, u32, u32)>, NetlinkError> {
        let mut q = RuleMessage::default();
        q.header.family = AddressFamily::Inet;
        let msgs = self.request(RouteNetlinkMessage::GetRule(q), NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewRule(r) = m else {
                continue;
            };
            let (mut prio, mut mark, mut table) = (0, 0, u32::from(r.header.table));
            for a in &r.attributes {
                match a {
                    RuleAttribute::Priority(p) => prio = *p,
                    RuleAttribute::FwMark(m) => mark = *m,
                    RuleAttribute::Table(t) => table = *t,
                    _ => {}
                }
            }
            out.push((prio, mark, table));
        }
        Ok(out)
    }

    fn rule_message(priority: u32, fwmark: u32, table: u32) -> RuleMessage {
        let mut r = RuleMessage::default();
        r.header.family = AddressFamily::Inet;
        r.header.action = RuleAction::ToTable;
        r.header.table = RouteHeader::RT_TABLE_UNSPEC;
        r.attributes = vec![
            RuleAttribute::Priority(priority),
            RuleAttribute::FwMark(fwmark),
            RuleAttribute::FwMask(u32::MAX),
            RuleAttribute::Table(table),
        ];
        r
    }

    /// Adds `fwmark <fwmark> lookup <table>` at `priority`.
    pub fn add_rule(&mut self, priority: u32, fwmark: u32, table: u32) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::NewRule(Self::rule_message(priority, fwmark, table)),
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
        )?;
        Ok(())
    }

    pub fn delete_rule(
        &mut self,
        priority: u32,
        fwmark: u32,
        table: u32,
    ) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::DelRule(Self::rule_message(priority, fwmark, table)),
            NLM_F_REQUEST | NLM_F_ACK,
        )?;
        Ok(())
    }

    /// Adds `ipproto udp sport <port> lookup <table>` at `priority`.
    pub fn add_udp_sport_rule(
        &mut self,
        priority: u32,
        port: u16,
        table: u32,
    ) -> Result<(), NetlinkError> {
        let mut r = RuleMessage::default();
        r.header.family = AddressFamily::Inet;
        r.header.action = RuleAction::ToTable;
        r.attributes = vec![
            RuleAttribute::Priority(priority),
            RuleAttribute::IpProtocol(IpProtocol::Udp),
            RuleAttribute::SourcePortRange(RulePortRange {
                start: port,
                end: port,
            }),
            RuleAttribute::Table(table),
        ];
        self.request(
            RouteNetlinkMessage::NewRule(r),
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
        )?;
        Ok(())
    }

    /// Deletes every IPv4 rule at `priority` that looks up `table`;
    /// returns how many.
    pub fn delete_rules_to(&mut self, priority: u32, table: u32) -> Result<usize, NetlinkError> {
        let n = self
            .rules()?
            .iter()
            .filter(|&&(p, _, t)| p == priority && t == table)
            .count();
        for _ in 0..n {
            let mut r = RuleMessage::default();
            r.header.family = AddressFamily::Inet;
            r.attributes = vec![
                RuleAttribute::Priority(priority),
                RuleAttribute::Table(table),
            ];
            self.request(RouteNetlinkMessage::DelRule(r), NLM_F_REQUEST | NLM_F_ACK)?;
        }
        Ok(n)
    }

    /// Sets table `table`'s default route to `dev <oif> src <source>`,
    /// on-link: its only use is the source address it gives.
    pub fn set_source_route(
        &mut self,
        table: u32,
        oif: u32,
        source: Ipv4Addr,
    ) -> Result<(), NetlinkError> {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.table = RouteHeader::RT_TABLE_UNSPEC;
        r.header.protocol = RouteProtocol::Static;
        r.header.scope = RouteScope::Link;
        r.header.kind = RouteType::Unicast;
        r.attributes = vec![
            RouteAttribute::Table(table),
            RouteAttribute::PrefSource(RouteAddress::Inet(source)),
            RouteAttribute::Oif(oif),
        ];
        self.request(
            RouteNetlinkMessage::NewRoute(r),
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK,
        )?;
        Ok(())
    }

    fn default_route(table: u32, gateway: Ipv4Addr, oif: u32) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        // Tables above 255 are named by the attribute alone.
        r.header.table = RouteHeader::RT_TABLE_UNSPEC;
        r.header.protocol = RouteProtocol::Static;
        r.header.scope = RouteScope::Universe;
        r.header.kind = RouteType::Unicast;
        r.attributes = vec![
            RouteAttribute::Table(table),
            RouteAttribute::Gateway(RouteAddress::Inet(gateway)),
            RouteAttribute::Oif(oif),
        ];
        r
    }

    /// The route the kernel would take now for a packet to `dst` with
    /// firewall mark `mark` (0: none) and, given `udp_sport`, a UDP
    /// source port. A lookup (`ip route get`): nothing is sent.
    pub fn route_get(
        &mut self,
        dst: Ipv4Addr,
        mark: u32,
        udp_sport: Option<u16>,
    ) -> Result<RouteLookup, NetlinkError> {
        let mut q = RouteMessage::default();
        q.header.address_family = AddressFamily::Inet;
        q.header.destination_prefix_length = 32;
        q.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        if mark != 0 {
            q.attributes.push(RouteAttribute::Mark(mark));
        }
        if let Some(port) = udp_sport {
            q.attributes.push(RouteAttribute::IpProto(17));
            q.attributes.push(RouteAttribute::Sport(port));
        }
        let msgs = self.request(RouteNetlinkMessage::GetRoute(q), NLM_F_REQUEST)?;
        let (mut gw, mut oif, mut src) = (None, None, None);
        for m in msgs {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            for a in &r.attributes {
                match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                    RouteAttribute::Oif(o) => oif = Some(*o),
                    RouteAttribute::PrefSource(RouteAddress::Inet(p)) => src = Some(*p),
                    _ => {}
                }
            }
        }
        Ok(RouteLookup {
            gateway: gw,
            oif,
            source: src,
        })
    }

    /// Sets table `table`'s default route to `via <gateway> dev <oif>`.
    pub fn set_default_route(
        &mut self,
        table: u32,
        gateway: Ipv4Addr,
        oif: u32,
    ) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::NewRoute(Self::default_route(table, gateway, oif)),
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK,
        )?;
        Ok(())
    }

    /// Deletes every IPv4 route of table `table`; returns how many.
    pub fn flush_table(&mut self, table: u32) -> Result<usize, NetlinkError> {
        let mut q = RouteMessage::default();
        q.header.address_family = AddressFamily::Inet;
        let msgs = self.request(RouteNetlinkMessage::GetRoute(q), NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut n = 0;
        for m in msgs {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            let t = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            if t == table {
                self.request(RouteNetlinkMessage::DelRoute(r), NLM_F_REQUEST | NLM_F_ACK)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Asks the kernel to resolve `addr` on `ifindex` (it sends ARP); the
    /// result arrives later as a neighbour notification.
    pub fn resolve(&mut self, ifindex: u32, addr: Ipv4Addr) -> Result<(), NetlinkError> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = ifindex;
        m.header.state = NeighbourState::None;
        m.header.flags = NeighbourFlags::Use;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                addr,
            )));
        self.request(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK,
        )?;
        Ok(())
    }
}

/// The number of *active* receive queues, from sysfs (rtnetlink reports
/// the allocated ones: a veth allocates one per CPU and activates one).
/// `None` when sysfs shows another namespace's interface (checked by index).
fn active_rx_queues(name: &str, index: u32) -> Option<u32> {
    let dir = std::path::Path::new("/sys/class/net").join(name);
    let idx: u32 = std::fs::read_to_string(dir.join("ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if idx != index {
        return None;
    }
    let n = std::fs::read_dir(dir.join("queues"))
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    (n > 0).then_some(n as u32)
}

fn usable_neighbour(n: &NeighbourMessage, ifindex: u32) -> Option<(Ipv4Addr, MacAddr)> {
    if n.header.ifindex != ifindex {
        return None;
    }
    if matches!(
        n.header.state,
        NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
    ) {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(i)) => ip = Some(*i),
            NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                mac = Some(MacAddr(b[..6].try_into().expect("6 bytes")))
            }
            _ => {}
        }
    }
    Some((ip?, mac?))
}

/// A socket subscribed to neighbour, route and link changes.
pub struct Watcher {
    sock: Socket,
    buf: Vec<u8>,
}

impl Watcher {
    pub fn new() -> Result<Watcher, NetlinkError> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind(&SocketAddr::new(
            0,
            RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_LINK,
        ))?;
        sock.set_non_blocking(true)?;
        let _ = sock.set_rx_buf_sz(1 << 20);
        Ok(Watcher {
            sock,
            buf: vec![0u8; 1 << 16],
        })
    }

    /// Drains pending notifications; true when anything arrived (or the
    /// socket overflowed, which also calls for a full re-read).
    pub fn changed(&mut self) -> bool {
        let mut any = false;
        loop {
            match self.sock.recv(&mut &mut self.buf[..], 0) {
                Ok(0) => return any,
                Ok(_) => any = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return any,
                // ENOBUFS: notifications were lost; re-read everything.
                Err(_) => return true,
            }
        }
    }

    /// The socket, for `poll()`.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.sock.as_fd()
    }
}

/// What the snapshot needs to know of the ingress interface: its MAC and
/// how checksums are made on it and on the sandbox's interface.
///
/// On the ingress interface: `node.checksum`, or with "auto" partial
/// checksums completed on virtual links (a veth passes on its sender's
/// partial checksums; so may other links of software's making) and
/// incremental updates on a NIC (a device without a link kind), which
/// delivers complete checksums. On the sandbox's interface, a veth that
/// Docker made, partial checksums are always completed unless every
/// checksum is summed anew anyway.
pub fn link_info(
    setting: crate::config::ChecksumSetting,
    link: &LinkFacts,
) -> crate::dataplane::tables::LinkInfo {
    use crate::config::ChecksumSetting;
    use crate::dataplane::tables::L4Checksum;
    crate::dataplane::tables::LinkInfo {
        mac: link.mac,
        l4_checksum: match setting {
            ChecksumSetting::Incremental => L4Checksum::Incremental,
            ChecksumSetting::Full => L4Checksum::Full,
            ChecksumSetting::Auto if link.kind.is_some() => L4Checksum::CompletePartial,
            ChecksumSetting::Auto => L4Checksum::Incremental,
        },
        sandbox_l4_checksum: match setting {
            ChecksumSetting::Full => L4Checksum::Full,
            ChecksumSetting::Auto | ChecksumSetting::Incremental => L4Checksum::CompletePartial,
        },
    }
}

/// For tests: moves the calling thread into a network namespace of its
/// own. False, and the test should return, when that is not allowed and
/// MESHGATE_SKIP_PRIVILEGED=1 opts out (said on stderr); a panic that says
/// so otherwise.
#[cfg(test)]
pub(crate) fn own_netns_or_skip() -> bool {
    match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        Ok(()) => true,
        Err(e)
            if e == nix::errno::Errno::EPERM
                && std::env::var("MESHGATE_SKIP_PRIVILEGED").as_deref() == Ok("1") =>
        {
            eprintln!("skipped (MESHGATE_SKIP_PRIVILEGED=1): a network namespace of its own: {e}");
            false
        }
        Err(e) => panic!(
            "a network namespace of its own (run the tests as root, or set MESHGATE_SKIP_PRIVILEGED=1 to skip): {e}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(args: &[&str]) {
        let st = std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "ip {args:?}");
    }

    /// In a network namespace of the test thread's own (root needed).
    #[test]
    fn global_ipv6_leaves_out_link_local_and_unique_local_addresses() {
        std::thread::spawn(|| {
            if !super::own_netns_or_skip() {
                return;
            }
            ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
            ip(&["link", "set", "d0", "up"]);
            ip(&["-6", "addr", "add", "fd00::9/64", "dev", "d0", "nodad"]);
            ip(&["-6", "addr", "add", "2001:2::9/64", "dev", "d0", "nodad"]);
            ip(&["-6", "addr", "add", "fe80::9/64", "dev", "d0", "nodad"]);
            let mut r = Rtnl::new().unwrap();
            let d0 = r.link("d0").unwrap().index;
            let want: Vec<std::net::Ipv6Addr> = vec!["2001:2::9".parse().unwrap()];
            assert_eq!(r.global_ipv6(d0).unwrap(), want);
            let lo = r.link("lo").unwrap().index;
            assert!(r.global_ipv6(lo).unwrap().is_empty());
        })
        .join()
        .unwrap();
    }
}
