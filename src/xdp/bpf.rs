//! The `bpf(2)` system call: maps, program loading, XDP links and test runs.
//!
//! meshgate needs no libbpf, no bpffs and no ELF object: its XDP programs are
//! assembled at run time ([`super::asm`]) and loaded here. Every file
//! descriptor is an [`OwnedFd`], so maps, programs and links are released when
//! their owner drops them, and by the kernel when the process dies: an XDP
//! program attached through a link is detached with the link's last fd, even
//! after SIGKILL.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `bpf_cmd` values.
mod cmd {
    pub const MAP_CREATE: i32 = 0;
    pub const MAP_LOOKUP_ELEM: i32 = 1;
    pub const MAP_UPDATE_ELEM: i32 = 2;
    pub const MAP_DELETE_ELEM: i32 = 3;
    pub const PROG_LOAD: i32 = 5;
    pub const PROG_TEST_RUN: i32 = 10;
    pub const PROG_GET_FD_BY_ID: i32 = 13;
    pub const OBJ_GET_INFO_BY_FD: i32 = 15;
    pub const LINK_CREATE: i32 = 28;
}

/// `bpf_map_type` values meshgate uses.
pub mod map_type {
    /// `BPF_MAP_TYPE_HASH`.
    pub const HASH: u32 = 1;
    /// `BPF_MAP_TYPE_ARRAY`.
    pub const ARRAY: u32 = 2;
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`: one value per CPU, no atomics needed.
    pub const PERCPU_ARRAY: u32 = 6;
    /// `BPF_MAP_TYPE_LRU_HASH`: full, it evicts the least recently used.
    pub const LRU_HASH: u32 = 9;
    /// `BPF_MAP_TYPE_XSKMAP`: queue index to AF_XDP socket.
    pub const XSKMAP: u32 = 17;
}

/// `BPF_PROG_TYPE_SCHED_CLS`: a tc (here tcx) program.
pub const PROG_TYPE_SCHED_CLS: u32 = 3;
/// `BPF_PROG_TYPE_XDP`.
pub const PROG_TYPE_XDP: u32 = 6;
/// `BPF_XDP`: the expected attach type of an XDP program.
pub const ATTACH_TYPE_XDP: u32 = 37;
/// `BPF_TCX_EGRESS`.
pub const ATTACH_TYPE_TCX_EGRESS: u32 = 47;

/// `XDP_FLAGS_*` for attaching.
pub mod xdp_flags {
    /// `XDP_FLAGS_SKB_MODE`: generic XDP, after the kernel built an skb.
    pub const SKB_MODE: u32 = 1 << 1;
    /// `XDP_FLAGS_DRV_MODE`: native XDP, in the driver.
    pub const DRV_MODE: u32 = 1 << 2;
}

/// XDP actions.
pub mod action {
    /// `XDP_ABORTED`: dropped, and traced as an error.
    pub const ABORTED: u32 = 0;
    /// `XDP_DROP`.
    pub const DROP: u32 = 1;
    /// `XDP_PASS`: to the kernel's stack.
    pub const PASS: u32 = 2;
    /// `XDP_TX`: back out of the same interface.
    pub const TX: u32 = 3;
    /// `XDP_REDIRECT`: to where a redirect helper said.
    pub const REDIRECT: u32 = 4;
}

/// A failed `bpf(2)` call, with what meshgate was doing.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}{hint}")]
pub struct BpfError {
    /// What meshgate was doing.
    pub what: String,
    /// Part of the message, not a `#[source]`, so that it is printed once.
    pub source: std::io::Error,
    /// The verifier's log or a hint to fix it, prefixed with a newline.
    pub hint: String,
}

impl BpfError {
    fn last(what: impl Into<String>) -> Self {
        let source = std::io::Error::last_os_error();
        let hint = match source.raw_os_error() {
            Some(libc::EPERM) => {
                "\n  hint: meshgate needs CAP_BPF and CAP_NET_ADMIN (or root)".to_string()
            }
            _ => String::new(),
        };
        BpfError {
            what: what.into(),
            source,
            hint,
        }
    }

    /// The OS error code.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// The `bpf_attr` union, as raw bytes written at the kernel's field offsets
/// (see `include/uapi/linux/bpf.h`); unused bytes stay zero, which the kernel
/// requires.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }

    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }

    fn name(&mut self, off: usize, name: &str) -> &mut Self {
        // BPF object names: at most 15 characters of [A-Za-z0-9_.].
        let n: Vec<u8> = name
            .bytes()
            .filter(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')
            .take(15)
            .collect();
        self.0[off..off + n.len()].copy_from_slice(&n);
        self
    }
}

fn sys_bpf(c: i32, attr: &mut Attr) -> libc::c_long {
    // SAFETY: `attr` is a valid, writable 128-byte buffer aligned to 8, the
    // size passed is its size, and every pointer stored inside it (keys,
    // values, instructions, logs, test buffers) refers to memory that the
    // caller keeps alive and large enough for the duration of this call.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            c,
            attr as *mut Attr,
            std::mem::size_of::<Attr>(),
        )
    }
}

/// `BPF_OBJ_GET_INFO_BY_FD`: the first `info.len()` bytes of the object's
/// info struct (the kernel copies what fits).
fn obj_info(fd: RawFd, info: &mut [u8], what: impl FnOnce() -> String) -> Result<(), BpfError> {
    let mut a = Attr::new();
    a.u32(0, fd as u32)
        .u32(4, info.len() as u32)
        .u64(8, info.as_mut_ptr() as u64);
    if sys_bpf(cmd::OBJ_GET_INFO_BY_FD, &mut a) < 0 {
        return Err(BpfError::last(what()));
    }
    Ok(())
}

fn fd_result(r: libc::c_long, what: impl FnOnce() -> String) -> Result<OwnedFd, BpfError> {
    if r < 0 {
        return Err(BpfError::last(what()));
    }
    // SAFETY: the kernel returned a new file descriptor that nothing else
    // owns; `OwnedFd` closes it exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// A BPF map.
#[derive(Debug)]
pub struct Map {
    fd: OwnedFd,
    key_size: usize,
    value_size: usize,
    name: String,
}

impl Map {
    /// Creates a map (`BPF_MAP_CREATE`) of `map_type` ([`map_type`]) named
    /// `name` (as `bpftool map` shows it).
    pub fn create(
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        name: &str,
    ) -> Result<Map, BpfError> {
        let mut a = Attr::new();
        a.u32(0, map_type)
            .u32(4, key_size)
            .u32(8, value_size)
            .u32(12, max_entries)
            .name(28, name);
        let fd = fd_result(sys_bpf(cmd::MAP_CREATE, &mut a), || {
            format!("creating BPF map {name}")
        })?;
        Ok(Map {
            fd,
            key_size: key_size as usize,
            value_size: value_size as usize,
            name: name.to_string(),
        })
    }

    /// The map's descriptor (for a program's `BPF_PSEUDO_MAP_FD`).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn check(&self, key: &[u8], value: Option<&[u8]>) {
        assert_eq!(key.len(), self.key_size, "key size of map {}", self.name);
        if let Some(v) = value {
            assert_eq!(v.len(), self.value_size, "value size of map {}", self.name);
        }
    }

    /// Inserts or replaces `key`.
    pub fn update(&self, key: &[u8], value: &[u8]) -> Result<(), BpfError> {
        self.check(key, Some(value));
        let mut a = Attr::new();
        a.u32(0, self.fd() as u32)
            .u64(8, key.as_ptr() as u64)
            .u64(16, value.as_ptr() as u64)
            .u64(24, 0);
        if sys_bpf(cmd::MAP_UPDATE_ELEM, &mut a) < 0 {
            return Err(BpfError::last(format!("updating BPF map {}", self.name)));
        }
        Ok(())
    }

    /// Deletes `key`; `Ok(false)` when it was absent.
    pub fn delete(&self, key: &[u8]) -> Result<bool, BpfError> {
        self.check(key, None);
        let mut a = Attr::new();
        a.u32(0, self.fd() as u32).u64(8, key.as_ptr() as u64);
        if sys_bpf(cmd::MAP_DELETE_ELEM, &mut a) < 0 {
            let e = BpfError::last(format!("deleting from BPF map {}", self.name));
            return if e.errno() == Some(libc::ENOENT) {
                Ok(false)
            } else {
                Err(e)
            };
        }
        Ok(true)
    }

    /// Looks `key` up into `value` (the map's value size); `Ok(false)`
    /// when absent.
    pub fn lookup(&self, key: &[u8], value: &mut [u8]) -> Result<bool, BpfError> {
        self.check(key, Some(&*value));
        self.lookup_into(key, value)
    }

    /// Looks `key` of a per-CPU map up: one value per possible CPU, each
    /// padded to 8 bytes as the kernel copies them; `None` when absent. The
    /// buffer is sized here, not by the caller: the kernel writes all of it.
    pub fn lookup_percpu(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BpfError> {
        self.check(key, None);
        let cpus = possible_cpus().map_err(|source| BpfError {
            what: format!("sizing a lookup of per-CPU map {}", self.name),
            source,
            hint: "\n  hint: /sys/devices/system/cpu/possible must be readable".to_string(),
        })?;
        let mut value = vec![0u8; self.value_size.next_multiple_of(8) * cpus];
        Ok(self.lookup_into(key, &mut value)?.then_some(value))
    }

    /// The lookup itself: `value` holds at least what the kernel copies.
    fn lookup_into(&self, key: &[u8], value: &mut [u8]) -> Result<bool, BpfError> {
        let mut a = Attr::new();
        a.u32(0, self.fd() as u32)
            .u64(8, key.as_ptr() as u64)
            .u64(16, value.as_mut_ptr() as u64);
        if sys_bpf(cmd::MAP_LOOKUP_ELEM, &mut a) < 0 {
            let e = BpfError::last(format!("reading BPF map {}", self.name));
            return if e.errno() == Some(libc::ENOENT) {
                Ok(false)
            } else {
                Err(e)
            };
        }
        Ok(true)
    }
}

/// The number of possible CPUs, the count of values in a per-CPU map.
/// Read once: it cannot change while the system runs.
fn possible_cpus() -> std::io::Result<usize> {
    static CPUS: std::sync::OnceLock<Result<usize, String>> = std::sync::OnceLock::new();
    CPUS.get_or_init(|| {
        // "0-1" or "0,2-3": the highest index + 1.
        let path = "/sys/devices/system/cpu/possible";
        let s = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        s.trim()
            .split([',', '-'])
            .filter_map(|x| x.parse::<usize>().ok())
            .max()
            .map(|m| m + 1)
            .ok_or_else(|| format!("{path}: `{}` names no CPU", s.trim()))
    })
    .clone()
    .map_err(std::io::Error::other)
}

/// A loaded BPF program.
#[derive(Debug)]
pub struct Program {
    fd: OwnedFd,
    name: String,
}

/// One eBPF instruction, as the kernel reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    /// The opcode: class, size or operation, mode or source.
    pub code: u8,
    /// dst register in the low nibble, src in the high one.
    pub regs: u8,
    /// The offset: of a memory access, or of a jump in instructions.
    pub off: i16,
    /// The immediate.
    pub imm: i32,
}

impl Program {
    /// Loads an XDP program. On a verifier rejection the error carries the
    /// verifier's log.
    pub fn load_xdp(insns: &[Insn], name: &str) -> Result<Program, BpfError> {
        Self::load(PROG_TYPE_XDP, ATTACH_TYPE_XDP, insns, name, None)
    }

    /// Loads an XDP program bound to device `ifindex` (`BPF_F_XDP_DEV_BOUND_ONLY`):
    /// it may call the driver's metadata kfuncs, and attaches only there.
    pub fn load_xdp_bound(insns: &[Insn], name: &str, ifindex: u32) -> Result<Program, BpfError> {
        Self::load(PROG_TYPE_XDP, ATTACH_TYPE_XDP, insns, name, Some(ifindex))
    }

    /// Opens the loaded program with kernel id `id` (one another process
    /// attached, say) and reads its name. Needs CAP_SYS_ADMIN.
    pub fn from_id(id: u32) -> Result<Program, BpfError> {
        let mut a = Attr::new();
        a.u32(0, id);
        let r = sys_bpf(cmd::PROG_GET_FD_BY_ID, &mut a);
        let fd = fd_result(r, || format!("opening BPF program {id}"))?;
        // bpf_prog_info: the name is bytes 64..80, NUL-padded.
        let mut info = [0u8; 80];
        obj_info(fd.as_raw_fd(), &mut info, || {
            format!("reading BPF program {id}")
        })?;
        let name = info[64..80]
            .iter()
            .take_while(|&&b| b != 0)
            .map(|&b| b as char)
            .collect();
        Ok(Program { fd, name })
    }

    /// Loads a tc (sched_cls) program for tcx egress.
    pub fn load_tc(insns: &[Insn], name: &str) -> Result<Program, BpfError> {
        Self::load(
            PROG_TYPE_SCHED_CLS,
            ATTACH_TYPE_TCX_EGRESS,
            insns,
            name,
            None,
        )
    }

    fn load(
        prog_type: u32,
        attach_type: u32,
        insns: &[Insn],
        name: &str,
        bound_to: Option<u32>,
    ) -> Result<Program, BpfError> {
        /// `BPF_F_XDP_DEV_BOUND_ONLY`.
        const DEV_BOUND_ONLY: u32 = 1 << 6;
        let license = CString::new("Dual MIT/GPL").expect("no NUL");
        let mut log = vec![0u8; 1 << 16];
        let attempt = |log_level: u32, log: &mut Vec<u8>| {
            let mut a = Attr::new();
            a.u32(0, prog_type)
                .u32(4, insns.len() as u32)
                .u64(8, insns.as_ptr() as u64)
                .u64(16, license.as_ptr() as u64)
                .u32(24, log_level)
                .u32(28, if log_level > 0 { log.len() as u32 } else { 0 })
                .u64(
                    32,
                    if log_level > 0 {
                        log.as_mut_ptr() as u64
                    } else {
                        0
                    },
                )
                .name(48, name)
                .u32(68, attach_type);
            if let Some(ifindex) = bound_to {
                a.u32(44, DEV_BOUND_ONLY).u32(64, ifindex);
            }
            sys_bpf(cmd::PROG_LOAD, &mut a)
        };
        let r = attempt(0, &mut log);
        if r >= 0 {
            let fd = fd_result(r, String::new)?;
            return Ok(Program {
                fd,
                name: name.to_string(),
            });
        }
        // Load again with the verifier log on, to say why.
        let r = attempt(1, &mut log);
        if r >= 0 {
            let fd = fd_result(r, String::new)?;
            return Ok(Program {
                fd,
                name: name.to_string(),
            });
        }
        let mut e = BpfError::last(format!("loading BPF program {name}"));
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        if !tail.is_empty() {
            e.hint = format!(
                "{}\n  verifier log (last lines):\n    {}",
                e.hint,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n    ")
            );
        }
        Err(e)
    }

    /// The program's descriptor.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The kernel's id of the program (as `ip link` and `bpftool` show it).
    pub fn id(&self) -> Result<u32, BpfError> {
        // bpf_prog_info: type, id.
        let mut info = [0u8; 16];
        obj_info(self.fd(), &mut info, || {
            format!("reading program {}'s id", self.name)
        })?;
        Ok(u32::from_ne_bytes(info[4..8].try_into().expect("4 bytes")))
    }

    /// Another handle on the same program (a duplicated descriptor).
    pub fn try_clone(&self) -> Result<Program, BpfError> {
        let fd = self.fd.try_clone().map_err(|source| BpfError {
            what: format!("duplicating program {}", self.name),
            source,
            hint: String::new(),
        })?;
        Ok(Program {
            fd,
            name: self.name.clone(),
        })
    }

    /// The name it was loaded with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs the program once on `frame` (`BPF_PROG_TEST_RUN`) and returns
    /// its XDP action.
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, BpfError> {
        let mut out = vec![0u8; frame.len() + 512];
        let mut a = Attr::new();
        a.u32(0, self.fd() as u32)
            .u32(8, frame.len() as u32)
            .u32(12, out.len() as u32)
            .u64(16, frame.as_ptr() as u64)
            .u64(24, out.as_mut_ptr() as u64)
            .u32(32, 1);
        if sys_bpf(cmd::PROG_TEST_RUN, &mut a) < 0 {
            return Err(BpfError::last(format!(
                "test-running XDP program {}",
                self.name
            )));
        }
        Ok(a.get_u32(4))
    }

    /// Attaches the program to `ifindex` through a BPF link. The program
    /// stays attached as long as the returned [`Link`] (or a duplicate of its
    /// fd) lives, and no longer: the kernel detaches it when the process
    /// exits, however it exits.
    pub fn attach_xdp(&self, ifindex: u32, flags: u32, ifname: &str) -> Result<Link, BpfError> {
        let mut a = Attr::new();
        a.u32(0, self.fd() as u32)
            .u32(4, ifindex)
            .u32(8, ATTACH_TYPE_XDP)
            .u32(12, flags);
        let r = sys_bpf(cmd::LINK_CREATE, &mut a);
        if r < 0 {
            let mut e = BpfError::last(format!("attaching XDP program {} to {ifname}", self.name));
            e.hint = match e.errno() {
                Some(libc::EBUSY) | Some(libc::EEXIST) => format!(
                    "\n  hint: another XDP program is attached to {ifname}; remove it with `ip link set dev {ifname} xdp off` (or stop the other meshgate)"
                ),
                Some(libc::EOPNOTSUPP) => format!(
                    "\n  hint: {ifname} has no native XDP support; set node.xdp_mode = \"generic\""
                ),
                Some(libc::ERANGE) => format!(
                    "\n  hint: the MTU of {ifname} is too large for single-buffer XDP; lower it to 1500"
                ),
                _ => e.hint,
            };
            return Err(e);
        }
        let fd = fd_result(r, String::new)?;
        Ok(Link { fd })
    }
}

impl Program {
    /// Attaches a tc program to `ifindex`'s egress through a tcx link.
    pub fn attach_tcx_egress(&self, ifindex: u32, ifname: &str) -> Result<Link, BpfError> {
        let mut a = Attr::new();
        a.u32(0, self.fd() as u32)
            .u32(4, ifindex)
            .u32(8, ATTACH_TYPE_TCX_EGRESS);
        let r = sys_bpf(cmd::LINK_CREATE, &mut a);
        fd_result(r, || {
            format!("attaching tc program {} to {ifname} egress", self.name)
        })
        .map(|fd| Link { fd })
    }
}

/// An attached program; dropping it detaches the program.
#[derive(Debug)]
pub struct Link {
    fd: OwnedFd,
}

impl Link {
    /// The link's descriptor.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
