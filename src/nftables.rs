//! nf_tables over netlink: just enough to replace or delete one table in
//! one transaction, from meshgate itself (no `nft` binary on the node).
//!
//! A transaction is a netlink batch: `BATCH_BEGIN`, the messages, and
//! `BATCH_END`; the kernel applies all of it or none. Replacing a table is
//! nft's own idiom, "add table; delete table; add table, chains, rules":
//! the first add makes the delete succeed whether or not the table was
//! there, so the same batch serves a first start, a restart and a restart
//! after a crash.
//!
//! Byte order, as the kernel reads it: attribute numbers (hooks,
//! priorities, registers, keys, lengths) are big-endian; data compared with
//! or stored in registers is in the order of the field it meets (packet
//! bytes as they are on the wire, marks and interface indexes in host
//! order).

use std::io;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// The nf_tables family of an IPv4 table (`NFPROTO_IPV4`).
pub const FAMILY_IPV4: u8 = 2;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;

/// Netfilter hooks of the inet families.
pub mod hook {
    pub const PREROUTING: u32 = 0;
    pub const OUTPUT: u32 = 3;
}

/// The priority nft calls `mangle`.
pub const PRIORITY_MANGLE: i32 = -150;

/// A register: `NFT_REG_1` and `NFT_REG_2`, 16 bytes each.
#[derive(Debug, Clone, Copy)]
pub enum Reg {
    R1 = 1,
    R2 = 2,
}

/// `meta` keys.
pub mod meta {
    pub const MARK: u32 = 3;
    pub const IIF: u32 = 4;
    pub const IIFTYPE: u32 = 8;
}

/// `ct` keys.
pub mod ct {
    pub const MARK: u32 = 3;
}

/// One expression of a rule.
#[derive(Debug, Clone)]
pub enum Expr {
    /// reg = meta key.
    MetaLoad(Reg, u32),
    /// meta key = reg.
    MetaSet(u32, Reg),
    /// reg = ct key (original direction).
    CtLoad(Reg, u32),
    /// ct key = reg.
    CtSet(u32, Reg),
    /// reg = `len` bytes of the link-layer header at `offset`.
    LinkLayer(Reg, u32, u32),
    /// Go on only when reg equals the data.
    CmpEq(Reg, Vec<u8>),
    /// dst = (src & mask) ^ 0, over the mask's length.
    And(Reg, Reg, Vec<u8>),
    /// reg = data.
    Immediate(Reg, Vec<u8>),
    /// Counts the packets and bytes that reach it (`nft list` shows them).
    Counter,
}

/// A chain with its hook.
#[derive(Debug, Clone)]
pub struct Chain {
    pub name: &'static str,
    /// `filter` or `route` (a `route` chain in `output` makes the kernel
    /// route a packet again when a rule changed its mark).
    pub kind: &'static str,
    pub hook: u32,
    pub priority: i32,
    pub rules: Vec<Vec<Expr>>,
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nf_tables: {0}")]
    Io(#[from] io::Error),
    #[error("nf_tables refused the transaction: {0}")]
    Kernel(io::Error),
    #[error("nf_tables: the kernel's answer is malformed")]
    Malformed,
}

/// Netlink attributes, appended to a message.
struct Attrs<'b>(&'b mut Vec<u8>);

impl Attrs<'_> {
    fn put(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        pad(self.0);
        self
    }

    fn str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(kind, &v)
    }

    fn be32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.put(kind, &v.to_be_bytes())
    }

    fn nested(&mut self, kind: u16, f: impl FnOnce(&mut Attrs<'_>)) -> &mut Self {
        let start = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        f(&mut Attrs(self.0));
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.0[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    /// `NFTA_*_DATA { NFTA_DATA_VALUE }`.
    fn data(&mut self, kind: u16, v: &[u8]) -> &mut Self {
        self.nested(kind, |a| {
            a.put(1, v);
        })
    }
}

fn pad(b: &mut Vec<u8>) {
    while b.len() % 4 != 0 {
        b.push(0);
    }
}

/// A batch under construction.
pub struct Batch {
    buf: Vec<u8>,
    seq: u32,
    acked: Vec<u32>,
}

impl Batch {
    fn new() -> Batch {
        let mut b = Batch {
            buf: Vec::new(),
            seq: 0,
            acked: Vec::new(),
        };
        b.message(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            0,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        b
    }

    fn message(
        &mut self,
        kind: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        f: impl FnOnce(&mut Attrs<'_>),
    ) {
        self.seq += 1;
        if flags & NLM_F_ACK != 0 {
            self.acked.push(self.seq);
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.push(family);
        self.buf.push(0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        f(&mut Attrs(&mut self.buf));
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn nft(&mut self, msg: u16, extra_flags: u16, family: u8, f: impl FnOnce(&mut Attrs<'_>)) {
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | msg;
        self.message(kind, NLM_F_REQUEST | NLM_F_ACK | extra_flags, family, 0, f);
    }

    fn table(&mut self, msg: u16, family: u8, name: &str) {
        let flags = if msg == NFT_MSG_NEWTABLE {
            NLM_F_CREATE
        } else {
            0
        };
        self.nft(msg, flags, family, |a| {
            a.str(1, name).be32(2, 0);
        });
    }

    fn chain(&mut self, family: u8, table: &str, c: &Chain) {
        self.nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE, family, |a| {
            a.str(1, table)
                .str(3, c.name)
                .nested(4, |h| {
                    h.be32(1, c.hook).be32(2, c.priority as u32);
                })
                // NF_ACCEPT: the chain only marks.
                .be32(5, 1)
                .str(7, c.kind);
        });
        for rule in &c.rules {
            self.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, family, |a| {
                a.str(1, table).str(2, c.name).nested(4, |list| {
                    for e in rule {
                        list.nested(1, |el| expr(el, e));
                    }
                });
            });
        }
    }

    fn finish(mut self) -> (Vec<u8>, Vec<u32>) {
        self.message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            0,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        (self.buf, self.acked)
    }
}

fn expr(a: &mut Attrs<'_>, e: &Expr) {
    let name = match e {
        Expr::MetaLoad(..) | Expr::MetaSet(..) => "meta",
        Expr::CtLoad(..) | Expr::CtSet(..) => "ct",
        Expr::LinkLayer(..) => "payload",
        Expr::CmpEq(..) => "cmp",
        Expr::And(..) => "bitwise",
        Expr::Immediate(..) => "immediate",
        Expr::Counter => "counter",
    };
    a.str(1, name).nested(2, |a| match e {
        Expr::MetaLoad(r, key) | Expr::CtLoad(r, key) => {
            a.be32(1, *r as u32).be32(2, *key);
        }
        Expr::MetaSet(key, r) => {
            a.be32(2, *key).be32(3, *r as u32);
        }
        Expr::CtSet(key, r) => {
            a.be32(2, *key).be32(4, *r as u32);
        }
        Expr::LinkLayer(r, offset, len) => {
            // Base 0: the link-layer header.
            a.be32(1, *r as u32)
                .be32(2, 0)
                .be32(3, *offset)
                .be32(4, *len);
        }
        Expr::CmpEq(r, v) => {
            // Operation 0: equal.
            a.be32(1, *r as u32).be32(2, 0).data(3, v);
        }
        Expr::And(dst, src, mask) => {
            a.be32(1, *src as u32)
                .be32(2, *dst as u32)
                .be32(3, mask.len() as u32)
                .data(4, mask)
                .data(5, &vec![0; mask.len()]);
        }
        Expr::Immediate(r, v) => {
            a.be32(1, *r as u32).data(2, v);
        }
        Expr::Counter => {}
    });
}

/// The batch that replaces table `name` of `family` by `chains` (or
/// deletes it, when `chains` is `None`); and the sequence numbers whose
/// answers to wait for.
pub fn replace_table_batch(
    family: u8,
    name: &str,
    chains: Option<&[Chain]>,
) -> (Vec<u8>, Vec<u32>) {
    let mut b = Batch::new();
    b.table(NFT_MSG_NEWTABLE, family, name);
    b.table(NFT_MSG_DELTABLE, family, name);
    if let Some(chains) = chains {
        b.table(NFT_MSG_NEWTABLE, family, name);
        for c in chains {
            b.chain(family, name, c);
        }
    }
    b.finish()
}

/// A new nf_tables socket of the calling thread's network namespace.
fn open() -> Result<Socket, NftError> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    // The kernel answers at once; the timeout only keeps a lost answer
    // from hanging the caller.
    nix::sys::socket::setsockopt(
        &sock,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(2, 0),
    )
    .map_err(io::Error::from)?;
    Ok(sock)
}

/// Sends `buf` and waits for `answers` acknowledgements; the first
/// refusal is the result.
fn exchange(buf: &[u8], answers: usize) -> Result<(), NftError> {
    let sock = open()?;
    sock.send(buf, 0)?;
    let mut waiting = answers;
    let mut first_error = None;
    let mut rbuf = vec![0u8; 1 << 16];
    while waiting > 0 {
        let n = match sock.recv(&mut &mut rbuf[..], 0) {
            Ok(n) => n,
            // After a refusal, the kernel may leave later messages of a
            // batch unanswered: the refusal is the news.
            Err(_) if first_error.is_some() => break,
            Err(e) => return Err(NftError::Io(e)),
        };
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(rbuf[off..off + 4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(rbuf[off + 4..off + 6].try_into().expect("2 bytes"));
            if len < 16 || off + len > n {
                return Err(NftError::Malformed);
            }
            if kind == NLMSG_ERROR {
                if len < 20 {
                    return Err(NftError::Malformed);
                }
                let code =
                    i32::from_ne_bytes(rbuf[off + 16..off + 20].try_into().expect("4 bytes"));
                if code != 0 && first_error.is_none() {
                    first_error = Some(io::Error::from_raw_os_error(-code));
                }
                waiting = waiting.saturating_sub(1);
            }
            off += (len + 3) & !3;
        }
    }
    match first_error {
        Some(e) => Err(NftError::Kernel(e)),
        None => Ok(()),
    }
}

/// Sends a batch on a new nf_tables socket of the calling thread's network
/// namespace and waits for the kernel's verdict on every message.
pub fn commit(batch: (Vec<u8>, Vec<u32>)) -> Result<(), NftError> {
    let (buf, acked) = batch;
    exchange(&buf, acked.len())
}

/// Whether table `name` of `family` exists in the calling thread's
/// network namespace.
pub fn table_exists(family: u8, name: &str) -> Result<bool, NftError> {
    let mut b = Batch {
        buf: Vec::new(),
        seq: 0,
        acked: Vec::new(),
    };
    b.nft(NFT_MSG_GETTABLE, 0, family, |a| {
        a.str(1, name);
    });
    match exchange(&b.buf, 1) {
        Ok(()) => Ok(true),
        Err(NftError::Kernel(e)) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(buf: &[u8]) -> Vec<(u16, u16)> {
        let mut out = Vec::new();
        let mut off = 0;
        while off < buf.len() {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
            let flags = u16::from_ne_bytes(buf[off + 6..off + 8].try_into().unwrap());
            assert_eq!(len % 4, 0, "messages are padded");
            out.push((kind, flags));
            off += len;
        }
        assert_eq!(off, buf.len());
        out
    }

    #[test]
    fn a_replacement_is_one_transaction_that_tolerates_a_missing_table() {
        let chains = [Chain {
            name: "pre",
            kind: "filter",
            hook: hook::PREROUTING,
            priority: PRIORITY_MANGLE,
            rules: vec![vec![Expr::MetaLoad(Reg::R1, meta::IIF)]],
        }];
        let (buf, acked) = replace_table_batch(FAMILY_IPV4, "t", Some(&chains));
        let kinds: Vec<u16> = messages(&buf).iter().map(|m| m.0).collect();
        let nft = |m| (NFNL_SUBSYS_NFTABLES << 8) | m;
        assert_eq!(
            kinds,
            [
                NFNL_MSG_BATCH_BEGIN,
                nft(NFT_MSG_NEWTABLE),
                nft(NFT_MSG_DELTABLE),
                nft(NFT_MSG_NEWTABLE),
                nft(NFT_MSG_NEWCHAIN),
                nft(NFT_MSG_NEWRULE),
                NFNL_MSG_BATCH_END
            ]
        );
        // Every message between the batch markers asks for an answer.
        assert_eq!(acked, [2, 3, 4, 5, 6]);
        let (buf, acked) = replace_table_batch(FAMILY_IPV4, "t", None);
        assert_eq!(messages(&buf).len(), 4);
        assert_eq!(acked.len(), 2);
    }

    #[test]
    fn nested_attributes_carry_their_length_and_flag() {
        let mut b = Vec::new();
        Attrs(&mut b).nested(4, |a| {
            a.be32(1, 7).str(2, "ab");
        });
        // 4 (outer header) + 8 (u32) + 8 ("ab\0" padded to 4).
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), 20);
        assert_eq!(u16::from_ne_bytes([b[2], b[3]]), 4 | NLA_F_NESTED);
        assert_eq!(&b[8..12], &7u32.to_be_bytes());
        assert_eq!(b.len(), 20);
    }
}
