//! The announcements' wire format, version 2: a fixed header, a body of
//! records, and an HMAC-SHA-256 tag over both.
//!
//! ```text
//!  0  "MG"        magic
//!  2  version     2
//!  3  kind        1: return paths, 2: what a manager knows of services
//!  4  key id      4 bytes of SHA-256 over the signing key (which key to check)
//!  8  node        the sender's address (its VTEP)
//! 12  epoch       u64: the sender's start, ms since the Unix epoch
//! 20  seq         u64: one more for every datagram of that epoch
//! 28  set         u32: the set this part belongs to
//! 32  part, parts u16, u16: this part's index, and how many the set has
//! 36  body length u16, then 2 bytes of zero
//! 40  body        records, whole ones only
//!     tag         32 bytes: HMAC-SHA-256(key, header and body)
//! ```
//!
//! A set's content is the concatenation of its parts' bodies; a part holds
//! whole records, so a receiver can tell a cut set from a whole one. Every
//! datagram stays within [`MAX_DATAGRAM`] bytes, under any path MTU of an
//! underlay that carries VXLAN, so that an announcement is never
//! fragmented however many tasks it names.
//!
//! Records (addresses are 4 bytes, numbers big-endian):
//! - `1 addr`: an ingress sandbox the return paths lead to;
//! - `2 addr`: a task whose return path is installed;
//! - `3 flags len name nports (published target proto)*`: a service, with
//!   flag 1 = preserves the client's address, 2 = outlier detection off;
//! - `4 addr`: a task of the last service named that is drained;
//! - `5 addr`: a task whose container asks for the client's address
//!   itself (its label `meshgate.client-ip=preserve`), whatever its
//!   service says;
//! - `6 addr mac`: the sender's own ingress sandbox and its MAC address,
//!   as the sender's Docker says (task nodes match replies' way back on
//!   it: Docker need not derive MACs from addresses).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::{Content, ReturnPaths, ServiceWord};
use crate::dataplane::desc::{ClientIp, OutlierDetection, Protocol};
use crate::wire::MacAddr;

/// The format's version; a datagram of another version is refused.
pub const VERSION: u8 = 2;
/// No datagram is larger.
pub const MAX_DATAGRAM: usize = 1200;
/// Parts of one set, at most: 64 × about 1 100 bytes of records is about
/// 17 000 tasks, far above any swarm's; a larger claim is refused.
pub const MAX_PARTS: u16 = 64;
const MAGIC: [u8; 2] = *b"MG";
pub(super) const HEADER: usize = 40;
pub(super) const TAG: usize = 32;
const MAX_BODY: usize = MAX_DATAGRAM - HEADER - TAG;
/// The longest service name a record carries (Docker allows 63).
const MAX_NAME: usize = 63;

type HmacSha256 = Hmac<Sha256>;

/// Which kind of content a set carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    ReturnPaths = 1,
    Services = 2,
}

/// The shared keys: the first signs, every one is accepted. Two during a
/// rotation: every node gets the new key second, then first, then alone.
#[derive(Clone)]
pub struct Keys(Vec<([u8; 4], Vec<u8>)>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        write!(f, "Keys({} key(s))", self.0.len())
    }
}

/// A key shorter than this is refused: it would be guessable.
pub const MIN_KEY: usize = 16;

impl Keys {
    /// One key per non-empty line (its bytes as they are, surrounding
    /// white space left out); one or two keys.
    pub fn parse(text: &[u8]) -> Result<Keys, String> {
        let mut keys = Vec::new();
        for line in text.split(|&b| b == b'\n') {
            let key = line.trim_ascii();
            if key.is_empty() {
                continue;
            }
            if key.len() < MIN_KEY {
                return Err(format!(
                    "a key of {} bytes; use at least {MIN_KEY} random ones (for example `openssl rand -hex 32`)",
                    key.len()
                ));
            }
            keys.push((key_id(key), key.to_vec()));
        }
        match keys.len() {
            0 => Err("no key in it".into()),
            1 | 2 => Ok(Keys(keys)),
            n => Err(format!(
                "{n} keys; give one, or two while changing it (the new one first)"
            )),
        }
    }

    /// Reads a key file, which only its owner (root or this user) may
    /// read: anyone who can read it can speak for every node.
    pub fn load(path: &Path) -> Result<Keys, String> {
        use std::os::unix::fs::MetadataExt;
        let at = |e: String| format!("announcement key {}: {e}", path.display());
        let meta = std::fs::metadata(path).map_err(|e| at(e.to_string()))?;
        if meta.mode() & 0o077 != 0 {
            return Err(at(format!(
                "readable by others (mode {:o}); make it 0600 or 0400 (`chmod 600`, or `mode: 0400` for a Docker secret)",
                meta.mode() & 0o777
            )));
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != 0 && meta.uid() != me {
            return Err(at(format!(
                "owned by uid {}; it must belong to root or to uid {me}",
                meta.uid()
            )));
        }
        let text = std::fs::read(path).map_err(|e| at(e.to_string()))?;
        Keys::parse(&text).map_err(at)
    }

    fn signing(&self) -> &([u8; 4], Vec<u8>) {
        &self.0[0]
    }

    fn by_id(&self, id: &[u8]) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(k, _)| k.as_slice() == id)
            .map(|(_, key)| key.as_slice())
    }
}

fn key_id(key: &[u8]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(b"meshgate announcement key id\0");
    h.update(key);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// A datagram's header, read before its tag is checked: only its size
/// and the key id are trusted until then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub node: Ipv4Addr,
    pub epoch: u64,
    pub seq: u64,
    pub set: u32,
    pub part: u16,
    pub parts: u16,
}

/// Why a datagram was refused before its content was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// Too short, too long, not this format or another version.
    Format,
    /// From an address that is no node of this swarm or these tables.
    Stranger,
    /// Over the sender's budget of checks per second (a flood).
    Budget,
    /// Signed with a key this node does not have.
    UnknownKey,
    /// The tag does not match: forged, or damaged.
    Forged,
    /// Signed, but it speaks for another node than the one it came from.
    Impersonation,
    /// Signed and seen before (or older than what was seen).
    Replay,
    /// Signed, but its records do not parse.
    Malformed,
}

impl Refusal {
    pub const ALL: [Refusal; 8] = [
        Refusal::Format,
        Refusal::Stranger,
        Refusal::Budget,
        Refusal::UnknownKey,
        Refusal::Forged,
        Refusal::Impersonation,
        Refusal::Replay,
        Refusal::Malformed,
    ];

    /// The label in `/metrics` and `meshgate stats`.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Format => "format",
            Refusal::Stranger => "stranger",
            Refusal::Budget => "budget",
            Refusal::UnknownKey => "unknown_key",
            Refusal::Forged => "forged",
            Refusal::Impersonation => "impersonation",
            Refusal::Replay => "replay",
            Refusal::Malformed => "malformed",
        }
    }
}

/// The header, if the datagram has this format's shape; nothing else is
/// looked at.
pub fn peek(bytes: &[u8]) -> Result<Header, Refusal> {
    if bytes.len() < HEADER + TAG || bytes.len() > MAX_DATAGRAM {
        return Err(Refusal::Format);
    }
    if bytes[..2] != MAGIC || bytes[2] != VERSION {
        return Err(Refusal::Format);
    }
    let kind = match bytes[3] {
        1 => Kind::ReturnPaths,
        2 => Kind::Services,
        _ => return Err(Refusal::Format),
    };
    let u16_at = |i: usize| u16::from_be_bytes([bytes[i], bytes[i + 1]]);
    let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let len = usize::from(u16_at(36));
    let (part, parts) = (u16_at(32), u16_at(34));
    if HEADER + len + TAG != bytes.len() || part >= parts || parts > MAX_PARTS {
        return Err(Refusal::Format);
    }
    Ok(Header {
        kind,
        node: Ipv4Addr::new(bytes[8], bytes[9], bytes[10], bytes[11]),
        epoch: u64_at(12),
        seq: u64_at(20),
        set: u32::from_be_bytes(bytes[28..32].try_into().expect("4 bytes")),
        part,
        parts,
    })
}

/// Checks the tag of a datagram [`peek`] accepted; gives its body.
pub fn authenticate<'b>(keys: &Keys, bytes: &'b [u8]) -> Result<&'b [u8], Refusal> {
    let key = keys.by_id(&bytes[4..8]).ok_or(Refusal::UnknownKey)?;
    let (signed, tag) = bytes.split_at(bytes.len() - TAG);
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(signed);
    // Constant time: a forger learns nothing from how long it took.
    mac.verify_slice(tag).map_err(|_| Refusal::Forged)?;
    Ok(&signed[HEADER..])
}

/// What a sender keeps between datagrams.
#[derive(Debug, Clone)]
pub struct Sender {
    pub node: Ipv4Addr,
    epoch: u64,
    seq: u64,
    set: u32,
}

impl Sender {
    /// A sender whose epoch is now: later than any earlier process's on
    /// this node (a restart, a takeover), so their datagrams cannot be
    /// replayed over its own.
    pub fn new(node: Ipv4Addr) -> Sender {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Sender::with_epoch(node, epoch)
    }

    pub fn with_epoch(node: Ipv4Addr, epoch: u64) -> Sender {
        Sender {
            node,
            epoch,
            seq: 0,
            set: 0,
        }
    }

    /// The datagrams of one set carrying `content`.
    pub fn encode(&mut self, keys: &Keys, content: &Content) -> Vec<Vec<u8>> {
        let (kind, records) = records(content);
        let mut bodies: Vec<Vec<u8>> = vec![Vec::new()];
        for r in records {
            let last = bodies.last_mut().expect("one at least");
            if last.len() + r.len() > MAX_BODY {
                bodies.push(r);
            } else {
                last.extend_from_slice(&r);
            }
        }
        bodies.truncate(usize::from(MAX_PARTS));
        self.set = self.set.wrapping_add(1);
        let parts = u16::try_from(bodies.len()).expect("at most MAX_PARTS");
        let (id, key) = keys.signing();
        let mut out = Vec::with_capacity(bodies.len());
        for (i, body) in bodies.into_iter().enumerate() {
            self.seq += 1;
            let mut d = Vec::with_capacity(HEADER + body.len() + TAG);
            d.extend_from_slice(&MAGIC);
            d.push(VERSION);
            d.push(kind as u8);
            d.extend_from_slice(id);
            d.extend_from_slice(&self.node.octets());
            d.extend_from_slice(&self.epoch.to_be_bytes());
            d.extend_from_slice(&self.seq.to_be_bytes());
            d.extend_from_slice(&self.set.to_be_bytes());
            d.extend_from_slice(&u16::try_from(i).expect("few parts").to_be_bytes());
            d.extend_from_slice(&parts.to_be_bytes());
            d.extend_from_slice(&u16::try_from(body.len()).expect("small").to_be_bytes());
            d.extend_from_slice(&[0, 0]);
            d.extend_from_slice(&body);
            let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(&d);
            d.extend_from_slice(&mac.finalize().into_bytes());
            out.push(d);
        }
        out
    }
}

const SANDBOX: u8 = 1;
const TASK: u8 = 2;
const SERVICE: u8 = 3;
const DRAINED: u8 = 4;
const ASKS: u8 = 5;
const OWN_SANDBOX: u8 = 6;

fn records(content: &Content) -> (Kind, Vec<Vec<u8>>) {
    let addr = |tag: u8, a: &Ipv4Addr| {
        let mut r = vec![tag];
        r.extend_from_slice(&a.octets());
        r
    };
    match content {
        Content::ReturnPaths(rp) => (
            Kind::ReturnPaths,
            rp.sandboxes
                .iter()
                .map(|a| addr(SANDBOX, a))
                .chain(rp.tasks.iter().map(|a| addr(TASK, a)))
                .chain(rp.asks.iter().map(|a| addr(ASKS, a)))
                .chain(rp.own_sandbox.iter().map(|(a, mac)| {
                    let mut r = addr(OWN_SANDBOX, a);
                    r.extend_from_slice(&mac.0);
                    r
                }))
                .collect(),
        ),
        Content::Services(services) => {
            let mut out = Vec::new();
            // Docker's names are at most 63 ASCII characters; a longer
            // one is no swarm service's.
            for s in services.iter().filter(|s| s.name.len() <= MAX_NAME) {
                let name = s.name.as_bytes();
                let flags = u8::from(s.client_ip == ClientIp::Preserve)
                    | (u8::from(s.outlier_detection == OutlierDetection::Off) << 1);
                let ports = &s.ports[..s.ports.len().min(usize::from(u8::MAX))];
                let mut r = vec![SERVICE, flags, name.len() as u8];
                r.extend_from_slice(name);
                r.push(ports.len() as u8);
                for &(published, target, proto) in ports {
                    r.extend_from_slice(&published.to_be_bytes());
                    r.extend_from_slice(&target.to_be_bytes());
                    r.push(proto.number());
                }
                out.push(r);
                out.extend(s.drained.iter().map(|a| addr(DRAINED, a)));
            }
            (Kind::Services, out)
        }
    }
}

/// A body's bytes, read record by record; running short is malformed.
struct Reader<'b>(&'b [u8]);

impl<'b> Reader<'b> {
    fn take(&mut self, n: usize) -> Result<&'b [u8], Refusal> {
        if self.0.len() < n {
            return Err(Refusal::Malformed);
        }
        let (x, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(x)
    }

    fn byte(&mut self) -> Result<u8, Refusal> {
        Ok(self.take(1)?[0])
    }

    fn addr(&mut self) -> Result<Ipv4Addr, Refusal> {
        let x = self.take(4)?;
        Ok(Ipv4Addr::new(x[0], x[1], x[2], x[3]))
    }

    /// A service record's fields after its tag.
    fn service(&mut self) -> Result<ServiceWord, Refusal> {
        let flags = self.byte()?;
        let len = usize::from(self.byte()?);
        let name = std::str::from_utf8(self.take(len)?)
            .map_err(|_| Refusal::Malformed)?
            .to_string();
        let n = usize::from(self.byte()?);
        let mut ports = Vec::with_capacity(n);
        for _ in 0..n {
            let p = self.take(5)?;
            let proto = match p[4] {
                6 => Protocol::Tcp,
                17 => Protocol::Udp,
                _ => return Err(Refusal::Malformed),
            };
            let port = |i: usize| u16::from_be_bytes([p[i], p[i + 1]]);
            ports.push((port(0), port(2), proto));
        }
        Ok(ServiceWord {
            name,
            ports,
            client_ip: if flags & 1 != 0 {
                ClientIp::Preserve
            } else {
                ClientIp::Snat
            },
            outlier_detection: if flags & 2 != 0 {
                OutlierDetection::Off
            } else {
                OutlierDetection::On
            },
            drained: BTreeSet::new(),
        })
    }
}

/// Reads a whole set's records (its parts' bodies in order).
pub fn parse(kind: Kind, bodies: &[Vec<u8>]) -> Result<Content, Refusal> {
    let mut rp = ReturnPaths::default();
    let mut services: Vec<ServiceWord> = Vec::new();
    for body in bodies {
        let mut r = Reader(body);
        while !r.0.is_empty() {
            match (kind, r.byte()?) {
                (Kind::ReturnPaths, SANDBOX) => {
                    rp.sandboxes.insert(r.addr()?);
                }
                (Kind::ReturnPaths, TASK) => {
                    rp.tasks.insert(r.addr()?);
                }
                (Kind::ReturnPaths, ASKS) => {
                    rp.asks.insert(r.addr()?);
                }
                (Kind::ReturnPaths, OWN_SANDBOX) => {
                    let a = r.addr()?;
                    let m: [u8; 6] = r.take(6)?.try_into().expect("6 bytes");
                    rp.own_sandbox = Some((a, MacAddr(m)));
                }
                (Kind::Services, SERVICE) => services.push(r.service()?),
                (Kind::Services, DRAINED) => {
                    let a = r.addr()?;
                    let last = services.last_mut().ok_or(Refusal::Malformed)?;
                    last.drained.insert(a);
                }
                _ => return Err(Refusal::Malformed),
            }
        }
    }
    Ok(match kind {
        Kind::ReturnPaths => Content::ReturnPaths(rp),
        Kind::Services => Content::Services(services),
    })
}
