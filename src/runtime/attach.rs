//! Where an XDP program sits on an interface, across processes.
//!
//! meshgate attaches its programs through netlink (as `ip link set … xdp`
//! does), not through a BPF link: the attachment outlives the process that
//! made it. A takeover's new process and a restart after a crash find the
//! previous process's program still in place, keeping published ports from
//! the kernel (whose resets would end every connection) while no socket is
//! bound, and swap their own in with one atomic `XDP_FLAGS_REPLACE`.
//!
//! Invariants: only a program of meshgate's own names is ever replaced;
//! anything else attached is an error that names it. A detach removes the
//! program only while it is still this process's (a successor's program is
//! left alone). Dropping an [`XdpPlace`] detaches, unless it was handed
//! over ([`XdpPlace::hand_over`]).

use crate::netlink::{NetlinkError, Rtnl};
use crate::xdp::bpf::{BpfError, Program, xdp_flags};

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(
        "{ifname}: XDP program `{name}` (id {id}) is attached and is not meshgate's; remove it with `ip link set dev {ifname} xdp off` if nothing needs it"
    )]
    Foreign {
        ifname: String,
        name: String,
        id: u32,
    },
    #[error("{ifname}: attaching XDP program {name}: {source}{hint}")]
    Netlink {
        ifname: String,
        name: String,
        source: NetlinkError,
        hint: String,
    },
    #[error(transparent)]
    Bpf(#[from] BpfError),
}

/// An attached program's place: the interface, through a netlink socket of
/// the interface's namespace, and the program this process put there.
pub struct XdpPlace {
    rtnl: Rtnl,
    ifindex: u32,
    ifname: String,
    mode: u32,
    program: Program,
    handed_over: bool,
}

/// What [`XdpPlace::attach`] found on the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Previous {
    /// Nothing: an interface of the kernel's until now.
    None,
    /// A meshgate program (id), left by a process that stopped or is
    /// handing over: replaced atomically.
    Meshgate(u32),
}

impl XdpPlace {
    /// Attaches `program` to `ifindex` in `mode` (`xdp_flags`), replacing a
    /// program named one of `ours` in one step.
    pub fn attach(
        mut rtnl: Rtnl,
        ifindex: u32,
        ifname: &str,
        mode: u32,
        program: &Program,
        ours: &[&str],
    ) -> Result<(XdpPlace, Previous), AttachError> {
        let netlink = |source: NetlinkError, hint: String| AttachError::Netlink {
            ifname: ifname.to_string(),
            name: program.name().to_string(),
            source,
            hint,
        };
        let current = rtnl
            .links()
            .map_err(|e| netlink(e, String::new()))?
            .into_iter()
            .find(|(_, l)| l.index == ifindex)
            .and_then(|(_, l)| l.xdp_program);
        let previous = match current {
            None => None,
            Some(id) => {
                let old = Program::from_id(id)?;
                if !ours.contains(&old.name()) {
                    return Err(AttachError::Foreign {
                        ifname: ifname.to_string(),
                        name: old.name().to_string(),
                        id,
                    });
                }
                Some((id, old))
            }
        };
        rtnl.set_xdp(
            ifindex,
            program.fd(),
            mode,
            previous.as_ref().map(|(_, old)| old.fd()),
        )
        .map_err(|e| {
            let hint = match &e {
                NetlinkError::Kernel(io) => match io.raw_os_error() {
                    Some(libc::EBUSY) | Some(libc::EEXIST) => format!(
                        "\n  hint: another XDP program is attached to {ifname} (in the other mode, or through a BPF link); `ip link show {ifname}` names it"
                    ),
                    Some(libc::EOPNOTSUPP) if mode == xdp_flags::DRV_MODE => format!(
                        "\n  hint: {ifname} has no native XDP support; set node.xdp_mode = \"generic\""
                    ),
                    Some(libc::ERANGE) => format!(
                        "\n  hint: the MTU of {ifname} is too large for single-buffer XDP; lower it to 1500"
                    ),
                    _ => String::new(),
                },
                _ => String::new(),
            };
            netlink(e, hint)
        })?;
        let place = XdpPlace {
            rtnl,
            ifindex,
            ifname: ifname.to_string(),
            mode,
            program: program.try_clone()?,
            handed_over: false,
        };
        let previous = match previous {
            None => Previous::None,
            Some((id, _)) => Previous::Meshgate(id),
        };
        Ok((place, previous))
    }

    /// Leaves the program attached, for the process that takes over.
    pub fn hand_over(mut self) {
        self.handed_over = true;
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Detaches this process's program, if it is still the one attached.
    fn detach(&mut self) -> Result<(), NetlinkError> {
        self.rtnl
            .set_xdp(self.ifindex, -1, self.mode, Some(self.program.fd()))
    }
}

impl Drop for XdpPlace {
    fn drop(&mut self) {
        if self.handed_over {
            return;
        }
        if let Err(e) = self.detach() {
            // EEXIST: another program replaced ours (a takeover): not ours
            // to remove.
            log::debug!("{}: detaching XDP program: {e}", self.ifname);
        }
    }
}

#[cfg(test)]
mod tests {
    //! On `lo` of a network namespace of the test thread's own: needs
    //! root, like the XDP program tests.
    use super::*;
    use crate::xdp::bpf::action;
    use crate::xdp::program::{CAPTURE_NAME, CaptureProgram};

    fn attached(rtnl: &mut Rtnl) -> Option<u32> {
        rtnl.link("lo").unwrap().xdp_program
    }

    #[test]
    fn a_place_replaces_only_meshgates_program_and_leaves_a_successors_alone() {
        std::thread::spawn(|| {
            if !crate::netlink::own_netns_or_skip() {
                return;
            }
            let mut rtnl = Rtnl::new().unwrap();
            let mode = xdp_flags::SKB_MODE;
            let a = CaptureProgram::load(None, None, 1, action::PASS).unwrap();
            let b = CaptureProgram::load(None, None, 1, action::PASS).unwrap();
            let (ida, idb) = (a.prog.id().unwrap(), b.prog.id().unwrap());
            let ours = [CAPTURE_NAME];

            let (pa, prev) = XdpPlace::attach(Rtnl::new().unwrap(), 1, "lo", mode, &a.prog, &ours).unwrap();
            assert_eq!(prev, Previous::None);
            assert_eq!(attached(&mut rtnl), Some(ida));
            // A successor replaces it in one step...
            let (pb, prev) = XdpPlace::attach(Rtnl::new().unwrap(), 1, "lo", mode, &b.prog, &ours).unwrap();
            assert_eq!(prev, Previous::Meshgate(ida));
            assert_eq!(attached(&mut rtnl), Some(idb));
            // ...and the predecessor's detach leaves the successor's program.
            drop(pa);
            assert_eq!(attached(&mut rtnl), Some(idb));
            // A program of another name is not replaced.
            let e = XdpPlace::attach(Rtnl::new().unwrap(), 1, "lo", mode, &a.prog, &["other"])
                .err()
                .expect("refused");
            assert!(
                matches!(&e, AttachError::Foreign { name, id, .. } if name == CAPTURE_NAME && *id == idb),
                "{e}"
            );
            // Handed over, the program stays; dropped, it goes.
            pb.hand_over();
            assert_eq!(attached(&mut rtnl), Some(idb));
            let (pa, _) = XdpPlace::attach(Rtnl::new().unwrap(), 1, "lo", mode, &a.prog, &ours).unwrap();
            drop(pa);
            assert_eq!(attached(&mut rtnl), None);
        })
        .join()
        .unwrap();
    }
}
