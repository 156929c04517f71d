//! The way back for replies to clients whose address meshgate preserved
//! (`client_ip = "preserve"`), installed in a task's network namespace on
//! the task's node.
//!
//! Such a task sees the client's own address and answers it; its routes
//! would send the answer out of its default route (in Swarm, to
//! `docker_gwbridge`), past the ingress node whose meshgate holds the flow.
//! So, inside the task's namespace and nowhere else:
//!
//! - the nf_tables table `ip meshgate`: in `prerouting`, a frame arriving
//!   on the ingress interface from an ingress sandbox's MAC (one per node:
//!   as that node announces it, else the one Docker 20.10 derives from the
//!   sandbox's address) marks its connection
//!   with that node's mark; in `output` (a `route` chain, so that the
//!   kernel routes again) a packet of a connection so marked carries the
//!   mark;
//! - per ingress node, the rule `fwmark M lookup M` and table M with one
//!   route: `default via <that node's sandbox address> dev <ingress
//!   interface>`.
//!
//! A reply thus goes back over the ingress network to the sandbox the
//! request came from, whichever node that was, while several nodes carry
//! connections to the same task.
//!
//! A UDP server that answers from a socket bound to the wildcard address
//! (most do; only some ask for the request's destination with
//! `IP_PKTINFO`) gets its source address from the route to the client,
//! chosen before any rule sees the packet: the default route's, another
//! interface's, so conntrack does not recognise the answer and it leaves
//! by the default route. For the UDP target ports of the task's preserving
//! services, the rule `ipproto udp sport P lookup` [`SOURCE_TABLE`] (one
//! route: `default dev <ingress interface> src <task address>`) makes the
//! source the task's ingress address; conntrack then matches the request,
//! and the marks above route the answer.
//!
//! [`install`] then asks the kernel how it would route such answers (a
//! route lookup per ingress node's mark and per UDP port) and fails,
//! removing what it put there, when anything else in the namespace routes
//! them first: a task is announced only once its way back is shown to
//! work.
//!
//! Invariants: every mark and table meshgate uses here is [`MARK_BASE`] in
//! its upper 16 bits and the sandbox address's lower 16 bits in the rest,
//! so it is stable while the ingress network is (a connection keeps its
//! way back when nodes join or leave) and removal finds everything without
//! remembering anything (after a crash too). Two sandboxes whose addresses
//! share their lower 16 bits (an ingress subnet larger than /16) are
//! refused. Nothing else in the namespace is touched.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::netlink::{NetlinkError, Rtnl};
use crate::nftables::{self, Chain, Expr, NftError, Reg};
use crate::wire::MacAddr;

/// The upper 16 bits of meshgate's marks and tables ("mg").
pub const MARK_BASE: u32 = 0x6d67_0000;
const MARK_MASK: u32 = 0xffff_0000;

/// The priority of meshgate's policy-routing rules: before `main` (32766).
pub const RULE_PRIORITY: u32 = 1000;

/// The table that gives UDP answers the task's ingress address as their
/// source, and the priority of its rules (after the marks').
pub const SOURCE_TABLE: u32 = MARK_BASE;
const SOURCE_RULE_PRIORITY: u32 = RULE_PRIORITY + 1;

/// `ARPHRD_ETHER`, the link type of an Ethernet interface.
const ARPHRD_ETHER: u16 = 1;

/// The nf_tables table meshgate owns in a task's namespace.
pub const TABLE: &str = "meshgate";

/// An ingress node as a task sees it: its sandbox on the ingress network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IngressNode {
    pub sandbox: Ipv4Addr,
    pub mac: MacAddr,
}

impl IngressNode {
    /// A sandbox with Docker's MAC for its address (02:42 + the address).
    pub fn docker(sandbox: Ipv4Addr) -> IngressNode {
        IngressNode {
            sandbox,
            mac: MacAddr::docker(sandbox),
        }
    }

    /// The node's connection mark, routing-rule mark and table.
    pub fn mark(&self) -> u32 {
        MARK_BASE | (u32::from(self.sandbox) & !MARK_MASK)
    }
}

/// What to install for one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The task's network namespace (a file such as Docker's
    /// `/var/run/docker/netns/<id>`).
    pub netns: PathBuf,
    /// The task's address on the ingress network: the interface holding it
    /// is the ingress interface.
    pub task: Ipv4Addr,
    pub ingress: BTreeSet<IngressNode>,
    /// UDP ports the task serves for preserving services (target ports).
    pub udp_ports: BTreeSet<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReturnPathError {
    #[error("task namespace {path}: {source} (entering it needs CAP_SYS_ADMIN)")]
    Enter {
        path: String,
        source: std::io::Error,
    },
    #[error("task namespace {path}: no interface holds the task's address {task}")]
    NoInterface { path: String, task: Ipv4Addr },
    #[error(
        "task namespace {path}: rp_filter is strict (1) on {interface}: the kernel would drop requests from clients it routes elsewhere; set it to 2 (loose) or 0 there, or keep this service in snat mode"
    )]
    StrictRpFilter { path: String, interface: String },
    #[error(
        "ingress sandboxes {0} and {1} share the lower 16 bits of their addresses, which meshgate's marks are made of (ingress subnet larger than /16)"
    )]
    MarkCollision(Ipv4Addr, Ipv4Addr),
    #[error(
        "ingress sandbox {0}: an address whose lower 16 bits are 0 cannot be told apart in meshgate's marks (ingress subnet larger than /16)"
    )]
    LowBitsZero(Ipv4Addr),
    #[error("task namespace {path}: {what}: {source}")]
    Netlink {
        path: String,
        what: &'static str,
        source: NetlinkError,
    },
    #[error("task namespace {path}: {source}")]
    Nft { path: String, source: NftError },
    #[error(
        "task namespace {path}: the return path does not take effect: {what}; what meshgate installed was removed"
    )]
    Probe { path: String, what: String },
}

/// The chains of table [`TABLE`] for a task whose ingress interface is
/// `ifindex`.
pub fn chains(ifindex: u32, ingress: &BTreeSet<IngressNode>) -> Vec<Chain> {
    let prerouting = ingress
        .iter()
        .map(|n| {
            vec![
                Expr::MetaLoad(Reg::R1, nftables::meta::IIF),
                Expr::CmpEq(Reg::R1, ifindex.to_ne_bytes().to_vec()),
                // An Ethernet interface (what nft itself checks before a
                // link-layer match, and shows it as `ether saddr`).
                Expr::MetaLoad(Reg::R1, nftables::meta::IIFTYPE),
                Expr::CmpEq(Reg::R1, ARPHRD_ETHER.to_ne_bytes().to_vec()),
                // The Ethernet source: 6 bytes at offset 6.
                Expr::LinkLayer(Reg::R1, 6, 6),
                Expr::CmpEq(Reg::R1, n.mac.0.to_vec()),
                // Packets per ingress node, for whoever lists the table.
                Expr::Counter,
                Expr::Immediate(Reg::R1, n.mark().to_ne_bytes().to_vec()),
                Expr::CtSet(nftables::ct::MARK, Reg::R1),
            ]
        })
        .collect();
    let output = vec![vec![
        Expr::CtLoad(Reg::R1, nftables::ct::MARK),
        Expr::And(Reg::R2, Reg::R1, MARK_MASK.to_ne_bytes().to_vec()),
        Expr::CmpEq(Reg::R2, MARK_BASE.to_ne_bytes().to_vec()),
        Expr::MetaSet(nftables::meta::MARK, Reg::R1),
    ]];
    vec![
        Chain {
            name: "prerouting",
            kind: "filter",
            hook: nftables::hook::PREROUTING,
            priority: nftables::PRIORITY_MANGLE,
            rules: prerouting,
        },
        Chain {
            name: "output",
            kind: "route",
            hook: nftables::hook::OUTPUT,
            priority: nftables::PRIORITY_MANGLE,
            rules: output,
        },
    ]
}

/// Refuses two ingress nodes with the same mark.
pub fn check_marks(ingress: &BTreeSet<IngressNode>) -> Result<(), ReturnPathError> {
    let mut seen = std::collections::HashMap::new();
    for n in ingress {
        // Lower bits 0 would be SOURCE_TABLE's number: an address that
        // ends so is a network address up to /16, hence a larger subnet.
        if n.mark() == SOURCE_TABLE {
            return Err(ReturnPathError::LowBitsZero(n.sandbox));
        }
        if let Some(other) = seen.insert(n.mark(), n.sandbox) {
            if other != n.sandbox {
                return Err(ReturnPathError::MarkCollision(other, n.sandbox));
            }
        }
    }
    Ok(())
}

/// Installs (or brings up to date) the return path of `plan`, from a
/// short-lived thread inside the task's namespace (setns(2) is per thread).
/// Installs the return path of `plan`'s task and shows that it takes
/// effect (the kernel's own route lookups); on a failed check, removes it
/// again.
pub fn install(plan: &Plan) -> Result<(), ReturnPathError> {
    check_marks(&plan.ingress)?;
    in_netns(&plan.netns, || {
        let r = install_inside(plan);
        if let Err(ReturnPathError::Probe { .. }) = &r {
            let _ = remove_inside(&plan.netns);
        }
        r
    })
}

/// Removes everything [`install`] put into the namespace at `netns`;
/// true when there was something.
pub fn remove(netns: &Path) -> Result<bool, ReturnPathError> {
    in_netns(netns, || remove_inside(netns))
}

fn in_netns<T: Send>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, ReturnPathError> + Send,
) -> Result<T, ReturnPathError> {
    let path = netns.display().to_string();
    let enter = |source| ReturnPathError::Enter {
        path: path.clone(),
        source,
    };
    let ns = std::fs::File::open(netns).map_err(enter)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| enter(std::io::Error::from(e)))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(enter(std::io::Error::other(
                "the thread in the namespace panicked",
            )))
        })
    })
}

fn netlink(path: &Path, what: &'static str) -> impl Fn(NetlinkError) -> ReturnPathError {
    let path = path.display().to_string();
    move |source| ReturnPathError::Netlink {
        path: path.clone(),
        what,
        source,
    }
}

/// rp_filter of `interface` as the kernel applies it: the larger of `all`
/// and the interface's own.
fn rp_filter(interface: &str) -> u32 {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(0)
    };
    read("all").max(read(interface))
}

fn install_inside(plan: &Plan) -> Result<(), ReturnPathError> {
    let path = plan.netns.display().to_string();
    let mut rtnl = Rtnl::new().map_err(netlink(&plan.netns, "opening rtnetlink"))?;
    let ifindex = rtnl
        .interface_with(plan.task)
        .map_err(netlink(&plan.netns, "listing addresses"))?
        .ok_or(ReturnPathError::NoInterface {
            path: path.clone(),
            task: plan.task,
        })?;
    let interface = rtnl
        .links()
        .map_err(netlink(&plan.netns, "listing interfaces"))?
        .into_iter()
        .find(|(_, l)| l.index == ifindex)
        .map(|(n, _)| n)
        .unwrap_or_default();
    if rp_filter(&interface) == 1 {
        return Err(ReturnPathError::StrictRpFilter { path, interface });
    }
    let wanted: BTreeSet<u32> = plan.ingress.iter().map(IngressNode::mark).collect();
    // Routes first, then rules, then the marks: a mark never points at a
    // table that is not there yet.
    for n in &plan.ingress {
        rtnl.set_default_route(n.mark(), n.sandbox, ifindex)
            .map_err(netlink(&plan.netns, "adding a route"))?;
    }
    let rules = rtnl
        .rules()
        .map_err(netlink(&plan.netns, "listing rules"))?;
    let ours = |&(prio, mark, table): &(u32, u32, u32)| {
        prio == RULE_PRIORITY && mark & MARK_MASK == MARK_BASE && table == mark
    };
    let present: BTreeSet<u32> = rules.iter().filter(|r| ours(r)).map(|r| r.1).collect();
    for &m in wanted.difference(&present) {
        rtnl.add_rule(RULE_PRIORITY, m, m)
            .map_err(netlink(&plan.netns, "adding a rule"))?;
    }
    // UDP answers' source address (see the module's doc).
    rtnl.delete_rules_to(SOURCE_RULE_PRIORITY, SOURCE_TABLE)
        .map_err(netlink(&plan.netns, "deleting a rule"))?;
    if plan.udp_ports.is_empty() {
        rtnl.flush_table(SOURCE_TABLE)
            .map_err(netlink(&plan.netns, "deleting a route"))?;
    } else {
        rtnl.set_source_route(SOURCE_TABLE, ifindex, plan.task)
            .map_err(netlink(&plan.netns, "adding a route"))?;
        for &p in &plan.udp_ports {
            rtnl.add_udp_sport_rule(SOURCE_RULE_PRIORITY, p, SOURCE_TABLE)
                .map_err(netlink(&plan.netns, "adding a rule"))?;
        }
    }
    nftables::commit(nftables::replace_table_batch(
        nftables::FAMILY_IPV4,
        TABLE,
        Some(&chains(ifindex, &plan.ingress)),
    ))
    .map_err(|source| ReturnPathError::Nft {
        path: path.clone(),
        source,
    })?;
    // Nodes that left: their marks are no longer set; their rules and
    // tables go.
    for &m in present.difference(&wanted) {
        rtnl.delete_rule(RULE_PRIORITY, m, m)
            .map_err(netlink(&plan.netns, "deleting a rule"))?;
        rtnl.flush_table(m)
            .map_err(netlink(&plan.netns, "deleting a route"))?;
    }
    probe(&mut rtnl, plan, ifindex)
}

/// Asks the kernel how it would route the task's answers now: those of
/// each ingress node's connections to that node's sandbox, a UDP answer
/// from each preserving port with the task's ingress address as source.
/// Anything else in the namespace that routes first (a rule of higher
/// priority, a VPN side-car's) fails it: the task is then not announced,
/// and gets SNAT, rather than answers that go astray.
fn probe(rtnl: &mut Rtnl, plan: &Plan, ifindex: u32) -> Result<(), ReturnPathError> {
    // A client's address, for the lookup only: nothing is sent to it.
    const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    let failed = |what: String| ReturnPathError::Probe {
        path: plan.netns.display().to_string(),
        what,
    };
    for n in &plan.ingress {
        let r = rtnl
            .route_get(CLIENT, n.mark(), None)
            .map_err(netlink(&plan.netns, "looking a route up"))?;
        let (gw, oif) = (r.gateway, r.oif);
        if (gw, oif) != (Some(n.sandbox), Some(ifindex)) {
            return Err(failed(format!(
                "an answer marked {:#x} is routed via {} (interface {}), not via sandbox {}: a rule or route in the namespace comes first",
                n.mark(),
                gw.map_or("no gateway".into(), |g| g.to_string()),
                oif.map_or("none".into(), |o| o.to_string()),
                n.sandbox
            )));
        }
    }
    for &port in &plan.udp_ports {
        let r = rtnl
            .route_get(CLIENT, 0, Some(port))
            .map_err(netlink(&plan.netns, "looking a route up"))?;
        let (oif, src) = (r.oif, r.source);
        if (src, oif) != (Some(plan.task), Some(ifindex)) {
            return Err(failed(format!(
                "a UDP answer from port {port} would leave from {} (interface {}), not from {}",
                src.map_or("no address".into(), |a| a.to_string()),
                oif.map_or("none".into(), |o| o.to_string()),
                plan.task
            )));
        }
    }
    Ok(())
}

fn remove_inside(netns: &Path) -> Result<bool, ReturnPathError> {
    let path = netns.display().to_string();
    let mut rtnl = Rtnl::new().map_err(netlink(netns, "opening rtnetlink"))?;
    let rules = rtnl.rules().map_err(netlink(netns, "listing rules"))?;
    let marks: BTreeSet<u32> = rules
        .iter()
        .filter(|&&(prio, mark, table)| {
            prio == RULE_PRIORITY && mark & MARK_MASK == MARK_BASE && table == mark
        })
        .map(|r| r.1)
        .collect();
    let had_table = nft_table_exists();
    let source_rules = rules
        .iter()
        .filter(|&&(p, _, t)| p == SOURCE_RULE_PRIORITY && t == SOURCE_TABLE)
        .count();
    if !had_table && marks.is_empty() && source_rules == 0 {
        // Nothing of meshgate's: change nothing.
        return Ok(false);
    }
    // The marks first: no packet is steered to a table being emptied.
    nftables::commit(nftables::replace_table_batch(
        nftables::FAMILY_IPV4,
        TABLE,
        None,
    ))
    .map_err(|source| ReturnPathError::Nft { path, source })?;
    for &m in &marks {
        rtnl.delete_rule(RULE_PRIORITY, m, m)
            .map_err(netlink(netns, "deleting a rule"))?;
        rtnl.flush_table(m)
            .map_err(netlink(netns, "deleting a route"))?;
    }
    rtnl.delete_rules_to(SOURCE_RULE_PRIORITY, SOURCE_TABLE)
        .map_err(netlink(netns, "deleting a rule"))?;
    rtnl.flush_table(SOURCE_TABLE)
        .map_err(netlink(netns, "deleting a route"))?;
    Ok(true)
}

/// Whether this namespace has meshgate's table: a replacement batch that
/// only deletes would succeed either way, so ask with a delete that fails
/// when there is nothing to delete.
fn nft_table_exists() -> bool {
    nftables::table_exists(nftables::FAMILY_IPV4, TABLE).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_stable_and_distinct_per_sandbox() {
        let a = IngressNode::docker(Ipv4Addr::new(10, 0, 0, 2));
        let b = IngressNode::docker(Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(a.mark(), 0x6d67_0002);
        assert_eq!(b.mark(), 0x6d67_0003);
        assert_eq!(a.mac.to_string(), "02:42:0a:00:00:02");
        assert!(check_marks(&[a, b].into_iter().collect()).is_ok());
        let far = IngressNode::docker(Ipv4Addr::new(10, 1, 0, 2));
        assert!(matches!(
            check_marks(&[a, far].into_iter().collect()),
            Err(ReturnPathError::MarkCollision(..))
        ));
        let zero = IngressNode::docker(Ipv4Addr::new(10, 1, 0, 0));
        assert!(matches!(
            check_marks(&[zero].into_iter().collect()),
            Err(ReturnPathError::LowBitsZero(..))
        ));
    }

    #[test]
    fn one_marking_rule_per_ingress_node_and_one_restoring_rule() {
        let nodes: BTreeSet<IngressNode> = [2, 3, 4]
            .into_iter()
            .map(|i| IngressNode::docker(Ipv4Addr::new(10, 0, 0, i)))
            .collect();
        let c = chains(7, &nodes);
        assert_eq!(c[0].rules.len(), 3);
        assert_eq!(c[1].rules.len(), 1);
        assert_eq!(c[1].kind, "route", "the output chain must route again");
    }
}
