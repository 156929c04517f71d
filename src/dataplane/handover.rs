//! The flow state one meshgate hands to the next: a takeover's transfer and
//! a crash's checkpoint share this format.
//!
//! A worker's flows become [`FlowRecord`]s: what identifies a flow across
//! processes (its keys, an IPv6 client's address, its task by address, its
//! SNAT port, its TCP state and sequence numbers, how long it has been idle,
//! an IPv6 client's neighbour) and nothing that is only meaningful inside
//! one process (task ids, snapshot indices, key digests, checksum deltas:
//! the receiver derives them again from its own tables, see
//! `Pipeline::restore_flows`).
//!
//! Layout, little-endian, 40-byte header then 64-byte records:
//!
//! ```text
//! header: magic "MGFLOWS\0" | version u32 | record size u32 | count u32 |
//!         worker u16 | workers u16 | SNAT ports lo u16, hi u16 | 0 u32 |
//!         FNV-1a 64 of the records
//! record: protocol u8 | state u8 | flags u8 (1 preserve, 2 IPv6) | 0 u8 |
//!         client [4] (0 for IPv6) | client port u16 | published u16 |
//!         task [4] | vtep [4] | target u16 | SNAT port u16 | idle ms u32 |
//!         client next u32 | task next u32 | hash u32 |
//!         IPv6 client [16] | IPv6 client's neighbour MAC [6] | 0 u16
//! ```
//!
//! Version 2 added the last 24 bytes of a record (IPv6 clients).
//!
//! Invariants: [`decode`] trusts nothing. A state of another version, a
//! foreign or truncated file, a checksum mismatch or a record that could
//! not have been written by [`encode`] is refused whole, with the reason;
//! it never panics (fuzzed: `fuzz/fuzz_targets/handover.rs`).

use std::net::Ipv4Addr;

use super::flow::{Flow, FlowState};

pub const MAGIC: [u8; 8] = *b"MGFLOWS\0";
/// The format's version; a receiver refuses any other.
pub const VERSION: u32 = 2;
pub const HEADER_LEN: usize = 40;
pub const RECORD_LEN: usize = 64;

/// What the worker that wrote a state was: its flows' SNAT ports belong to
/// it (`port % workers == worker`), so only the same worker of the same
/// number of workers can take them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub worker: u16,
    pub workers: u16,
    pub snat_ports: (u16, u16),
}

/// One flow, as it crosses from one process to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRecord {
    pub protocol: u8,
    pub state: FlowState,
    pub preserve: bool,
    pub client: Ipv4Addr,
    pub client_port: u16,
    pub published: u16,
    pub task: Ipv4Addr,
    pub vtep: Ipv4Addr,
    pub target: u16,
    pub snat_port: u16,
    /// Milliseconds since the flow's last packet, when it was written.
    pub idle_ms: u32,
    pub client_next: u32,
    pub task_next: u32,
    pub hash: u32,
    /// An IPv6 client's address (`client` is then unspecified) and the
    /// neighbour its packets came from, where its replies go.
    pub client6: Option<(std::net::Ipv6Addr, [u8; 6])>,
}

impl FlowRecord {
    /// A flow as it crosses, idle for `idle_ms`; `client6` is its IPv6
    /// client's address when its key is `v6`.
    pub fn of(f: &Flow, idle_ms: u32, client6: &[u8; 16]) -> FlowRecord {
        FlowRecord {
            protocol: f.key.protocol,
            state: f.state,
            preserve: f.preserve,
            client: if f.key.v6 {
                Ipv4Addr::UNSPECIFIED
            } else {
                f.key.client
            },
            client6: f
                .key
                .v6
                .then(|| (std::net::Ipv6Addr::from(*client6), f.client_mac)),
            client_port: f.key.client_port,
            published: f.key.published,
            task: f.task_addr,
            vtep: f.vtep,
            target: f.target,
            snat_port: f.snat_port,
            idle_ms,
            client_next: f.client_next,
            task_next: f.task_next,
            hash: f.hash,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoverError {
    #[error("not a meshgate flow state (no MGFLOWS header)")]
    Foreign,
    #[error(
        "flow state of version {found}; this meshgate reads version {VERSION} only (it starts without the old flows)"
    )]
    Version { found: u32 },
    #[error("flow state truncated or overlong: {0}")]
    Length(String),
    #[error("flow state corrupt: its checksum does not match")]
    Checksum,
    #[error("flow state corrupt: header: {0}")]
    Header(String),
    #[error("flow state corrupt: record {index}: {why}")]
    Record { index: usize, why: &'static str },
    #[error(
        "flow state of worker {} of {} with SNAT ports {}-{}; this is worker {} of {} with {}-{} (the same queues and flows.snat_ports are needed to take flows over)",
        found.worker, found.workers, found.snat_ports.0, found.snat_ports.1,
        here.worker, here.workers, here.snat_ports.0, here.snat_ports.1
    )]
    Origin { found: Origin, here: Origin },
}

/// What became of restored records.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RestoreReport {
    pub restored: usize,
    /// Their service or task is no longer in the tables.
    pub task_gone: usize,
    /// Their keys or SNAT port clash, or the table is full.
    pub refused: usize,
}

/// FNV-1a, 64 bits: a corruption check, not a defence against forgery
/// (the state is written and read by root on one machine).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub fn state_byte(s: FlowState) -> u8 {
    match s {
        FlowState::SynSent => 0,
        FlowState::Established => 1,
        FlowState::Closing => 2,
        FlowState::Closed => 3,
        FlowState::Udp => 4,
    }
}

fn state_of(b: u8) -> Option<FlowState> {
    Some(match b {
        0 => FlowState::SynSent,
        1 => FlowState::Established,
        2 => FlowState::Closing,
        3 => FlowState::Closed,
        4 => FlowState::Udp,
        _ => return None,
    })
}

/// One record's bytes (`reserved`, byte 3, is 0 here; the journal uses it
/// as its seal).
pub fn encode_record(r: &FlowRecord) -> [u8; RECORD_LEN] {
    let mut b = [0u8; RECORD_LEN];
    let flags = u8::from(r.preserve) | if r.client6.is_some() { 2 } else { 0 };
    b[..4].copy_from_slice(&[r.protocol, state_byte(r.state), flags, 0]);
    if let Some((a, mac)) = r.client6 {
        b[40..56].copy_from_slice(&a.octets());
        b[56..62].copy_from_slice(&mac);
    }
    b[4..8].copy_from_slice(&r.client.octets());
    b[8..10].copy_from_slice(&r.client_port.to_le_bytes());
    b[10..12].copy_from_slice(&r.published.to_le_bytes());
    b[12..16].copy_from_slice(&r.task.octets());
    b[16..20].copy_from_slice(&r.vtep.octets());
    b[20..22].copy_from_slice(&r.target.to_le_bytes());
    b[22..24].copy_from_slice(&r.snat_port.to_le_bytes());
    for (i, v) in [r.idle_ms, r.client_next, r.task_next, r.hash]
        .into_iter()
        .enumerate()
    {
        b[24 + 4 * i..28 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    b
}

/// A header: `magic`, the version, the record size, `count`, the origin,
/// a reserved zero and `checksum`.
pub fn encode_header(
    magic: [u8; 8],
    origin: Origin,
    count: u32,
    checksum: u64,
) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&magic);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(RECORD_LEN as u32).to_le_bytes());
    h[16..20].copy_from_slice(&count.to_le_bytes());
    h[20..22].copy_from_slice(&origin.worker.to_le_bytes());
    h[22..24].copy_from_slice(&origin.workers.to_le_bytes());
    h[24..26].copy_from_slice(&origin.snat_ports.0.to_le_bytes());
    h[26..28].copy_from_slice(&origin.snat_ports.1.to_le_bytes());
    h[32..40].copy_from_slice(&checksum.to_le_bytes());
    h
}

/// Encodes a worker's flows.
pub fn encode(origin: Origin, records: &[FlowRecord]) -> Vec<u8> {
    let mut body = Vec::with_capacity(records.len() * RECORD_LEN);
    for r in records {
        body.extend_from_slice(&encode_record(r));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&encode_header(
        MAGIC,
        origin,
        records.len() as u32,
        fnv1a(&body),
    ));
    out.extend_from_slice(&body);
    out
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn addr_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// Checks a header with `magic` and the body length it announces; the
/// origin, the count and the checksum field.
pub fn decode_header(bytes: &[u8], magic: [u8; 8]) -> Result<(Origin, usize, u64), HandoverError> {
    if bytes.len() < 12 || bytes[..8] != magic {
        return Err(HandoverError::Foreign);
    }
    let version = u32_at(bytes, 8);
    if version != VERSION {
        return Err(HandoverError::Version { found: version });
    }
    if bytes.len() < HEADER_LEN {
        return Err(HandoverError::Length(format!(
            "{} bytes, shorter than the header",
            bytes.len()
        )));
    }
    let record_len = u32_at(bytes, 12) as usize;
    if record_len != RECORD_LEN {
        return Err(HandoverError::Length(format!(
            "records of {record_len} bytes, not {RECORD_LEN}"
        )));
    }
    let count = u32_at(bytes, 16) as usize;
    let body = &bytes[HEADER_LEN..];
    if Some(body.len()) != count.checked_mul(RECORD_LEN) {
        return Err(HandoverError::Length(format!(
            "{count} records announced, {} bytes of them",
            body.len()
        )));
    }
    let origin = Origin {
        worker: u16_at(bytes, 20),
        workers: u16_at(bytes, 22),
        snat_ports: (u16_at(bytes, 24), u16_at(bytes, 26)),
    };
    if origin.workers == 0 || origin.worker >= origin.workers {
        return Err(HandoverError::Header(format!(
            "worker {} of {}",
            origin.worker, origin.workers
        )));
    }
    // Found by the fuzz target: bytes `encode` never writes.
    if u32_at(bytes, 28) != 0 {
        return Err(HandoverError::Header("reserved bytes are not zero".into()));
    }
    let checksum = u64::from_le_bytes(bytes[32..40].try_into().expect("8 bytes"));
    Ok((origin, count, checksum))
}

/// Decodes and checks one record (byte 3 must be 0).
pub fn decode_record(r: &[u8]) -> Result<FlowRecord, &'static str> {
    if r.len() != RECORD_LEN {
        return Err("truncated");
    }
    let protocol = r[0];
    let state = state_of(r[1]).ok_or("unknown state")?;
    match (protocol, state) {
        (6, FlowState::Udp) => return Err("a TCP flow in the UDP state"),
        (17, s) if s != FlowState::Udp => return Err("a UDP flow in a TCP state"),
        (6 | 17, _) => {}
        _ => return Err("neither TCP nor UDP"),
    }
    if r[2] & !3 != 0 || r[3] != 0 || r[62..64] != [0, 0] {
        return Err("malformed flags");
    }
    let (preserve, v6) = (r[2] & 1 != 0, r[2] & 2 != 0);
    let client6 = if v6 {
        if preserve {
            return Err("an IPv6 client's flow cannot keep its address");
        }
        if r[4..8] != [0; 4] {
            return Err("an IPv6 client with an IPv4 address");
        }
        let mut a = [0u8; 16];
        a.copy_from_slice(&r[40..56]);
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&r[56..62]);
        Some((std::net::Ipv6Addr::from(a), mac))
    } else {
        if r[40..62].iter().any(|&b| b != 0) {
            return Err("an IPv4 client with an IPv6 address");
        }
        None
    };
    Ok(FlowRecord {
        protocol,
        state,
        preserve,
        client6,
        client: addr_at(r, 4),
        client_port: u16_at(r, 8),
        published: u16_at(r, 10),
        task: addr_at(r, 12),
        vtep: addr_at(r, 16),
        target: u16_at(r, 20),
        snat_port: u16_at(r, 22),
        idle_ms: u32_at(r, 24),
        client_next: u32_at(r, 28),
        task_next: u32_at(r, 32),
        hash: u32_at(r, 36),
    })
}

/// Decodes and checks a state written by [`encode`].
pub fn decode(bytes: &[u8]) -> Result<(Origin, Vec<FlowRecord>), HandoverError> {
    let (origin, count, checksum) = decode_header(bytes, MAGIC)?;
    let body = &bytes[HEADER_LEN..];
    if fnv1a(body) != checksum {
        return Err(HandoverError::Checksum);
    }
    let mut out = Vec::with_capacity(count);
    for (index, r) in body.chunks_exact(RECORD_LEN).enumerate() {
        out.push(decode_record(r).map_err(|why| HandoverError::Record { index, why })?);
    }
    Ok((origin, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn origin() -> Origin {
        Origin {
            worker: 1,
            workers: 2,
            snat_ports: (1024, 65535),
        }
    }

    fn record(i: u32) -> FlowRecord {
        FlowRecord {
            protocol: if i % 2 == 0 { 6 } else { 17 },
            state: if i % 2 == 0 {
                FlowState::Established
            } else {
                FlowState::Udp
            },
            preserve: i % 3 == 0,
            client: Ipv4Addr::from(0xc612_0001u32.wrapping_add(i)),
            client_port: 40000u16.wrapping_add(i as u16),
            published: 8080,
            task: Ipv4Addr::new(198, 18, 128, 4),
            vtep: Ipv4Addr::new(198, 18, 0, 11),
            target: 80,
            snat_port: 1025u16.wrapping_add(2u16.wrapping_mul(i as u16)),
            idle_ms: i.wrapping_mul(7),
            client_next: i.wrapping_mul(31),
            task_next: i.wrapping_mul(17),
            hash: i.wrapping_mul(2_654_435_761),
            client6: None,
        }
    }

    /// Every fifth record an IPv6 client's.
    fn mixed(i: u32) -> FlowRecord {
        let r = record(i);
        if i % 5 != 4 {
            return r;
        }
        let a = std::net::Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, i as u16);
        FlowRecord {
            preserve: false,
            client: Ipv4Addr::UNSPECIFIED,
            client6: Some((a, [2, 0, 0, 0, 0, i as u8])),
            ..r
        }
    }

    #[test]
    fn a_state_reads_back_as_written() {
        let recs: Vec<FlowRecord> = (0..100).map(mixed).collect();
        let bytes = encode(origin(), &recs);
        assert_eq!(bytes.len(), HEADER_LEN + 100 * RECORD_LEN);
        assert_eq!(decode(&bytes), Ok((origin(), recs)));
        assert_eq!(decode(&encode(origin(), &[])), Ok((origin(), vec![])));
    }

    #[test]
    fn what_cannot_be_trusted_is_refused_with_its_reason() {
        let bytes = encode(origin(), &[record(0), record(1)]);
        assert_eq!(decode(b"{\"flows\": []}"), Err(HandoverError::Foreign));
        let mut newer = bytes.clone();
        newer[8..12].copy_from_slice(&3u32.to_le_bytes());
        let e = decode(&newer).unwrap_err();
        assert_eq!(e, HandoverError::Version { found: 3 });
        assert!(e.to_string().contains("version 3"), "{e}");
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(HandoverError::Length(_))
        ));
        let mut flipped = bytes.clone();
        flipped[HEADER_LEN + 5] ^= 1;
        assert_eq!(decode(&flipped), Err(HandoverError::Checksum));
        let mut reserved = bytes.clone();
        reserved[30] = 0xfa;
        assert!(matches!(decode(&reserved), Err(HandoverError::Header(_))));
        // A record encode never writes, with a checksum that matches it.
        let mut odd = encode(origin(), &[record(0)]);
        odd[HEADER_LEN + 1] = 4; // TCP in the UDP state
        let sum = fnv1a(&odd[HEADER_LEN..]);
        odd[32..40].copy_from_slice(&sum.to_le_bytes());
        assert!(matches!(
            decode(&odd),
            Err(HandoverError::Record { index: 0, .. })
        ));
    }

    proptest! {
        /// Any bytes: a state or a reason, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(&VERSION.to_le_bytes());
            framed.extend_from_slice(&bytes);
            let _ = decode(&framed);
        }

        /// Any records encode and decode to themselves.
        #[test]
        fn round_trip(seeds in proptest::collection::vec(any::<u32>(), 0..50)) {
            let recs: Vec<FlowRecord> = seeds.iter().map(|&s| mixed(s)).collect();
            prop_assert_eq!(decode(&encode(origin(), &recs)), Ok((origin(), recs)));
        }
    }
}
