//! The way to tasks on this node: an AF_XDP socket on the ingress
//! sandbox's interface, inside the sandbox's network namespace.
//!
//! Docker connects every node's `ingress_sbox` namespace to the node's own
//! ingress overlay bridge, where this node's tasks are; frames sent from
//! that interface reach them without VXLAN, and their replies to the
//! sandbox address arrive on it. A capture program redirects those replies
//! (IPv4 TCP and UDP to the sandbox address) to the socket, before the
//! sandbox's kernel, which knows nothing of meshgate's flows, answers them
//! with resets; ARP and everything else go to the sandbox's kernel, which
//! keeps answering the tasks' ARP requests for the sandbox address.
//!
//! Only the thread that opens the socket enters the namespace (setns(2) is
//! per thread): the socket, the netlink lookup and the program's link are
//! bound to the namespace when they are created and keep working from any
//! thread afterwards. The place detaches the program when it is dropped.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::attach::XdpPlace;
use crate::netlink::Rtnl;
use crate::wire::MacAddr;
use crate::xdp::bpf::xdp_flags;
use crate::xdp::program::CaptureProgram;
use crate::xdp::{BindMode, FrameToken, Port, Umem, Xsk, XskConfig};

/// What opening the sandbox needs.
#[derive(Debug, Clone)]
pub struct SandboxParams {
    /// The sandbox's network namespace (a file such as
    /// `/var/run/docker/netns/ingress_sbox`).
    pub netns: PathBuf,
    /// The sandbox's address and MAC on the ingress network: the interface
    /// is the one with this MAC.
    pub address: Ipv4Addr,
    pub mac: MacAddr,
    pub frames: u32,
    pub frame_size: u32,
    pub ring_size: u32,
}

/// The open sandbox: its socket and frames, and the program that feeds it.
pub struct Sandbox {
    pub port: Port,
    pub umem: Arc<Umem>,
    pub frames: Vec<FrameToken>,
    pub interface: String,
    /// Kept for as long as the socket is used; dropping `place` detaches
    /// the program.
    pub program: CaptureProgram,
    pub place: XdpPlace,
}

/// Why the sandbox could not be opened; each names what to check.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "ingress sandbox {path}: {source}; the ingress sandbox is Docker's <exec-root>/netns/ingress_sbox (see swarm.sandbox or ingress.sandbox)"
    )]
    Enter {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "ingress sandbox {path}: no interface with the sandbox's MAC {mac} (ingress.mac); interfaces there: {found}"
    )]
    NoInterface {
        path: String,
        mac: MacAddr,
        found: String,
    },
    #[error("ingress sandbox {path}: {what}: {message}")]
    Setup {
        path: String,
        what: &'static str,
        message: String,
    },
}

/// Opens the sandbox's socket and attaches its capture program, from a
/// short-lived thread inside the sandbox's namespace.
pub fn open(p: &SandboxParams) -> Result<Sandbox, SandboxError> {
    std::thread::scope(|s| {
        s.spawn(|| open_inside(p))
            .join()
            .unwrap_or_else(|_| Err(setup(&p.netns, "opening", "the thread panicked".into())))
    })
}

fn setup(path: &Path, what: &'static str, message: String) -> SandboxError {
    SandboxError::Setup {
        path: path.display().to_string(),
        what,
        message,
    }
}

fn open_inside(p: &SandboxParams) -> Result<Sandbox, SandboxError> {
    let path = p.netns.display().to_string();
    let enter = |source| SandboxError::Enter {
        path: path.clone(),
        source,
    };
    let ns = std::fs::File::open(&p.netns).map_err(enter)?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| enter(std::io::Error::from(e)))?;
    let mut rtnl = Rtnl::new().map_err(|e| setup(&p.netns, "opening netlink", e.to_string()))?;
    let links = rtnl
        .links()
        .map_err(|e| setup(&p.netns, "listing interfaces", e.to_string()))?;
    let Some((interface, link)) = links.iter().find(|(_, l)| l.mac == p.mac).cloned() else {
        let found: Vec<String> = links
            .iter()
            .map(|(n, l)| format!("{n} ({})", l.mac))
            .collect();
        return Err(SandboxError::NoInterface {
            path,
            mac: p.mac,
            found: found.join(", "),
        });
    };
    // One socket, on queue 0: a veth receives on one queue unless its
    // channels are raised with ethtool, which Docker does not do (netlink
    // reports the queues allocated, one per CPU, not the ones in use).
    // Copy mode always: the sandbox's interface is a veth.
    let xsk = Xsk::open(&XskConfig {
        ifname: interface.clone(),
        queues: vec![0],
        frames_per_queue: p.frames,
        frame_size: p.frame_size,
        ring_size: p.ring_size,
        mode: BindMode::Copy,
        huge_pages: false,
    })
    .map_err(|e| setup(&p.netns, "opening the AF_XDP socket", e.to_string()))?;
    let program = CaptureProgram::load(
        Some(p.address),
        Some(p.mac),
        1,
        crate::xdp::bpf::action::DROP,
    )
    .map_err(|e| setup(&p.netns, "loading the capture program", e.to_string()))?;
    let Xsk {
        umem,
        mut ports,
        mut initial,
        ..
    } = xsk;
    let port = ports.pop().expect("one queue, one port");
    let frames = initial.pop().expect("one queue, one pool");
    program
        .register_socket(0, port.raw_fd())
        .map_err(|e| setup(&p.netns, "registering the socket", e.to_string()))?;
    // The netlink socket was opened in the sandbox: the place keeps
    // working from other threads.
    let (place, _) = XdpPlace::attach(
        rtnl,
        link.index,
        &interface,
        xdp_flags::DRV_MODE,
        &program.prog,
        &[crate::xdp::program::CAPTURE_NAME],
    )
    .map_err(|e| setup(&p.netns, "attaching the capture program", e.to_string()))?;
    Ok(Sandbox {
        port,
        umem,
        frames,
        interface,
        program,
        place,
    })
}
