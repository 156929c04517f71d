//! The per-worker flow table.
//!
//! A flow is one client transport connection (TCP) or exchange (UDP) to a
//! published port, pinned to the task chosen when it began, with the SNAT
//! port that identifies it on the overlay.
//!
//! Layout: flows live in a slab (`Vec<Flow>`, preallocated to the worker's
//! share of `flows.max`), indexed by two [`Index`]es of slot numbers (the
//! keys live in the slab; an entry is a slot and 32 bits of its key's
//! hash, 8 bytes):
//! - `by_client`: (protocol, client address, client port, published port),
//!   the forward path's key;
//! - `by_snat`: (protocol, task address, target port, SNAT port, peer), the
//!   reply path's key, unique like the kernel's NAT tuple. The peer is the
//!   reply's destination when it is not the sandbox: the client itself, for
//!   a flow of a service that preserves the client's address (`preserve`),
//!   whose "SNAT port" is the client's own port.
//!
//! Keys hash as one 64-bit word through a folded multiply with a random
//! per-table seed (HashDoS resistance); a key's hash is computed once per
//! packet and reused by an insert that follows a miss.
//!
//! Invariants:
//! - both tables and the slab hold exactly the same set of live flows;
//! - capacity never grows after construction: no allocation on the fast path;
//! - a SNAT port allocated by worker `w` of `n` satisfies `port % n == w`,
//!   so any worker can tell from a reply which worker owns its flow; a
//!   preserving flow lives on the worker its client port names in the same
//!   way (the pipeline hands its client's packets there).
//!
//! Memory: see [`table_bytes`]; measured by `bench/run` at one million flows.

use super::index::Index;
use std::net::Ipv4Addr;

use super::tables::TaskId;

/// Forward-path key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientKey {
    /// The client's IPv4 address; for an IPv6 client (`v6`), a digest of
    /// its address keyed by the table's secret ([`FlowTable::digest6`]),
    /// the address itself being kept beside the flow
    /// ([`FlowTable::client6`]).
    pub client: Ipv4Addr,
    pub client_port: u16,
    pub published: u16,
    pub protocol: u8,
    /// The client came over IPv6 (it fits the key's padding: `Flow` stays
    /// one cache line).
    pub v6: bool,
}

/// Reply-path key: a reply's source, destination port and, when the reply
/// is not addressed to the sandbox, its destination (`peer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnatKey {
    pub task: Ipv4Addr,
    pub target: u16,
    pub snat_port: u16,
    pub protocol: u8,
    /// The client, for a flow that keeps the client's address;
    /// `UNSPECIFIED` for a flow translated to the sandbox's address.
    pub peer: Ipv4Addr,
}

/// Connection state, after IPVS's simplified TCP states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FlowState {
    /// Client SYN seen, no reply yet.
    SynSent,
    /// The task replied: an established connection (ipvsadm's ActiveConn).
    Established,
    /// A FIN was seen.
    Closing,
    /// A RST was seen.
    Closed,
    /// A UDP exchange.
    Udp,
}

impl FlowState {
    /// IPVS counts only established TCP connections as active.
    pub fn is_active(self) -> bool {
        self == FlowState::Established
    }
}

/// One flow. 64 bytes, one cache line.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    pub key: ClientKey,
    pub task_addr: Ipv4Addr,
    pub task_id: TaskId,
    /// Index of the task in the snapshot of generation `snapshot_gen`.
    pub task_index: u32,
    pub snapshot_gen: u32,
    /// The task's node (VTEP), checked against the source of replies.
    pub vtep: Ipv4Addr,
    pub target: u16,
    pub snat_port: u16,
    /// Worker tick (ms) of the last packet.
    pub last_seen: u32,
    pub hash: u32,
    /// Next-hop MAC towards the client, valid for `snapshot_gen`.
    pub client_mac: [u8; 6],
    pub client_mac_valid: bool,
    pub state: FlowState,
    /// TCP: the sequence number after the client's SYN, which a reset in
    /// SYN-SENT must acknowledge.
    pub client_next: u32,
    /// TCP: the sequence number after the last segment from the task that
    /// was forwarded to the client; a reset with it is in the client's window.
    pub task_next: u32,
    /// The checksum change of the forward translation, constant for a flow
    /// (RFC 1624 sum of `!old + new`, folded): addresses only (the IPv4
    /// header), and addresses with ports (the TCP/UDP pseudo-header and
    /// header). The reverse translation is the one's-complement negation.
    /// In the wire's byte order (as `wire::get16_ne` reads a checksum).
    /// An IPv6 client's `delta_l4` starts from its IPv6 pseudo-header, so
    /// that it also covers the translation between the families
    /// (`pipeline::nat::deltas_of`).
    pub delta_addrs: u16,
    pub delta_l4: u16,
    /// The task sees the client's address and port: DNAT only, and
    /// `snat_port` is the client's port (no port taken from the bitmaps).
    pub preserve: bool,
    /// TCP: a task's reset to this connection's SYN was held back once
    /// (`super::health`); the next one reaches the client.
    pub held_reset: bool,
}

/// Bytes a flow table for `max` flows allocates, all of it up front: per
/// flow the slab entry, its `live` flag, its free-list slot and room for an
/// IPv6 client's address; and two indexes ([`Index`]) of 8-byte entries, a
/// power of two holding `max` at three quarters full. For `max` = 2^20
/// that is 64 + 1 + 4 + 16 + 2 × 8 × 2 = 117 bytes per flow: the
/// power-of-two rounding doubles the entries just above 2^20 × 4/3.
pub fn table_bytes(max: usize) -> usize {
    max * (std::mem::size_of::<Flow>() + 1 + 4 + 16) + 2 * Index::bytes(max)
}

/// The key of a hash of a key packed into 64 bits (foldhash's folded
/// multiply): a seed with the multiplier it makes, made once per table
/// rather than per packet.
#[derive(Debug, Clone, Copy)]
struct HashKey {
    seed: u64,
    mul: u64,
}

impl HashKey {
    fn new(seed: u64) -> HashKey {
        HashKey {
            seed,
            mul: 0x9e37_79b9_7f4a_7c15u64 ^ seed.rotate_left(32),
        }
    }

    #[inline(always)]
    fn hash(self, x: u64) -> u64 {
        let m = u128::from(x ^ self.seed) * u128::from(self.mul);
        (m as u64) ^ ((m >> 64) as u64)
    }

    /// 32 bits of a keyed hash of two words in one folded multiply, as
    /// foldhash hashes a `u128`: both words keyed, so that neither can be
    /// chosen to cancel the other.
    #[inline(always)]
    fn hash2(self, a: u64, b: u64) -> u32 {
        let m = u128::from(a ^ self.seed) * u128::from(b ^ self.mul);
        let h = (m as u64) ^ ((m >> 64) as u64);
        (h ^ (h >> 32)) as u32
    }
}

impl ClientKey {
    #[inline(always)]
    fn packed(&self) -> u64 {
        (u64::from(u32::from(self.client)) << 32)
            | (u64::from(self.client_port) << 16)
            | u64::from(self.published)
    }
}

impl SnatKey {
    /// The peer shares the task's 32 bits: for one task the packing stays
    /// one-to-one, so chosen client addresses and ports can make at most as
    /// many keys collide as there are tasks (no hash flooding).
    #[inline(always)]
    fn packed(&self) -> u64 {
        (u64::from(u32::from(self.task) ^ u32::from(self.peer)) << 32)
            | (u64::from(self.target) << 16)
            | u64::from(self.snat_port)
    }
}

pub(super) fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x6d65_7368_6761_7465);
    h.finish() | 1
}

/// Outcome of [`FlowTable::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// Full, and nothing could be evicted.
    Full,
    /// No free SNAT port for this task and target port.
    PortsExhausted,
}

/// Why [`FlowTable::restore`] refused a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreError {
    /// Its client key or reply key is already in the table.
    Duplicate,
    /// Its SNAT port is not one this worker gives out.
    NotOwned,
    Full,
}

/// Where a flow table mirrors its flows so that they outlive the process
/// (`super::journal`). Called off the per-packet path: when a flow is
/// placed or removed, and by the expiry sweep for each live flow it visits
/// (whose state may have changed since it was placed).
pub trait FlowMirror: Send {
    /// `client6`: the flow's IPv6 client, when its key is `v6` (put again
    /// once the address is in place, see [`FlowTable::set_client6`]).
    fn put(&mut self, slot: u32, flow: &Flow, client6: &[u8; 16]);
    fn clear(&mut self, slot: u32);
    fn refresh(&mut self, slot: u32, flow: &Flow);
}

/// What [`FlowTable::insert`] displaced to make room.
#[derive(Debug, Clone, Copy)]
pub struct Evicted(pub Flow);

pub struct FlowTable {
    slab: Vec<Flow>,
    live: Vec<bool>,
    free: Vec<u32>,
    by_client: Index,
    by_snat: Index,
    seed: u64,
    /// The keys of the client, SNAT and destination hashes and of IPv6
    /// clients' digests, from `seed`.
    keys: [HashKey; 4],
    capacity: usize,
    /// Slots below this index have been used (slots are taken lowest
    /// first); sweeps and eviction samples look only there.
    high_water: usize,
    /// Clock hand for expiry sweeps and eviction sampling.
    hand: usize,
    worker: u16,
    workers: u16,
    ports: (u16, u16),
    /// The flow the last insert evicted ([`Self::take_evicted`]).
    evicted: Option<Flow>,
    /// This worker's first SNAT port and how many it owns: fixed by
    /// `worker`, `workers` and `ports`, computed once (three divisions a
    /// new flow saved).
    owned: (u32, u32),
    /// This worker's SNAT ports in use, per destination (protocol, task,
    /// target port): bit `i` is the worker's `i`-th port (see [`PortBits`]).
    in_use: DestPorts,
    mirror: Option<Box<dyn FlowMirror>>,
    /// The IPv6 client of each slot whose flow has `key.v6`.
    client6: Vec<[u8; 16]>,
}

/// Slots examined when looking for a flow to evict.
const EVICTION_SAMPLE: usize = 16;

/// The ports of one destination that a worker has given out: one bit per
/// port the worker owns (`first + i * workers`), so that a free port is
/// found whenever there is one, scanning at most 1 008 words (64 512 ports
/// with one worker) from a hashed start.
#[derive(Debug, Clone)]
struct PortBits {
    words: Box<[u64]>,
    used: u32,
}

impl PortBits {
    fn new(ports: u32) -> PortBits {
        PortBits {
            words: vec![0; ports.div_ceil(64) as usize].into_boxed_slice(),
            used: 0,
        }
    }

    #[inline]
    fn get(&self, i: u32) -> bool {
        self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    #[inline]
    fn set(&mut self, i: u32, on: bool) {
        let w = &mut self.words[(i / 64) as usize];
        let bit = 1u64 << (i % 64);
        if on && *w & bit == 0 {
            *w |= bit;
            self.used += 1;
        } else if !on && *w & bit != 0 {
            *w &= !bit;
            self.used -= 1;
        }
    }

    /// The first clear bit at or after `start`, wrapping, below `n`.
    fn first_clear_from(&self, start: u32, n: u32) -> Option<u32> {
        if self.used >= n {
            return None;
        }
        let words = self.words.len() as u32;
        let (w0, b0) = (start / 64, start % 64);
        for k in 0..=words {
            let w = (w0 + k) % words;
            let mut free = !self.words[w as usize];
            if k == 0 {
                free &= u64::MAX << b0; // at or after `start` in its word
            }
            while free != 0 {
                let i = w * 64 + free.trailing_zeros();
                if i < n {
                    return Some(i);
                }
                free &= free - 1;
            }
        }
        // (k == words visited the start word again, unmasked.)
        None
    }
}

/// A destination of SNAT ports, packed: protocol, task address, target
/// port (one-to-one).
#[inline(always)]
fn dest(protocol: u8, task: Ipv4Addr, target: u16) -> u64 {
    (u64::from(protocol) << 48) | (u64::from(u32::from(task)) << 16) | u64::from(target)
}

/// The port bitmaps of the destinations this worker has flows to, found
/// through an [`Index`] by the packed destination's keyed hash (the
/// hashbrown map it replaced hashed the three fields one by one), and
/// first through `recent`: the destination last found for a flow's task,
/// by the task's number in the snapshot (a hint, checked against the key:
/// a task's other target port or a renumbered task only misses).
#[derive(Debug)]
struct DestPorts {
    dests: Vec<(u64, PortBits)>,
    index: Index,
    /// Per task number modulo its length: a destination's index plus one,
    /// or 0.
    recent: [u32; RECENT],
}

/// Entries of [`DestPorts::recent`]: a snapshot's tasks up to this many
/// each have their own.
const RECENT: usize = 64;

/// Destinations the index is first made for; it doubles when full.
const DESTS_FIRST: usize = 64;

impl DestPorts {
    fn new() -> DestPorts {
        DestPorts {
            dests: Vec::new(),
            index: Index::with_capacity(DESTS_FIRST),
            recent: [0; RECENT],
        }
    }

    /// The destination `key` of a flow to task number `task`: the recent
    /// one of that task when it is `key`'s, else found by its hash (and
    /// made the task's recent one).
    #[inline(always)]
    fn find_recent(&mut self, key: u64, task: u32, hk: HashKey) -> Option<u32> {
        let r = &mut self.recent[task as usize % RECENT];
        let i = r.wrapping_sub(1);
        if self.dests.get(i as usize).is_some_and(|d| d.0 == key) {
            return Some(i);
        }
        let i = self
            .index
            .find(hk.hash(key), |i| self.dests[i as usize].0 == key)?;
        *r = i + 1;
        Some(i)
    }

    /// The bitmap of `key`, a destination of task number `task`.
    #[inline(always)]
    fn get_mut(&mut self, key: u64, task: u32, hk: HashKey) -> Option<&mut PortBits> {
        let i = self.find_recent(key, task, hk)?;
        Some(&mut self.dests[i as usize].1)
    }

    /// The bitmap of `key`, a destination of task number `task`, made
    /// (for `count` ports) if it has none.
    #[inline(always)]
    fn get_or_add(&mut self, key: u64, task: u32, hk: HashKey, count: u32) -> &mut PortBits {
        let i = match self.find_recent(key, task, hk) {
            Some(i) => i,
            None => self.add(key, hk, count),
        };
        &mut self.dests[i as usize].1
    }

    #[cold]
    fn add(&mut self, key: u64, hk: HashKey, count: u32) -> u32 {
        if self.dests.len() == self.index.capacity() {
            self.reindex(hk, self.dests.len() * 2);
        }
        let i = self.dests.len() as u32;
        self.dests.push((key, PortBits::new(count)));
        self.index.insert(hk.hash(key), i);
        i
    }

    /// Drops the bitmaps of destinations with no port in use.
    fn prune(&mut self, hk: HashKey) {
        let before = self.dests.len();
        self.dests.retain(|(_, b)| b.used > 0);
        if self.dests.len() != before {
            self.reindex(hk, self.dests.len().max(DESTS_FIRST));
        }
    }

    fn reindex(&mut self, hk: HashKey, max: usize) {
        self.recent = [0; RECENT];
        self.index = Index::with_capacity(max);
        for (i, (key, _)) in self.dests.iter().enumerate() {
            self.index.insert(hk.hash(*key), i as u32);
        }
    }
}

/// The first SNAT port of `ports` (inclusive) that worker `worker` of
/// `workers` owns, and how many it owns.
fn owned_ports(ports: (u16, u16), worker: u16, workers: u16) -> (u32, u32) {
    let (lo, hi) = (u32::from(ports.0), u32::from(ports.1));
    let (n, w) = (u32::from(workers), u32::from(worker));
    let first = lo + (w + n - lo % n) % n;
    let count = if first > hi { 0 } else { (hi - first) / n + 1 };
    (first, count)
}

impl FlowTable {
    /// A table of `capacity` flows for worker `worker` of `workers`, with
    /// SNAT ports in `ports` (inclusive).
    pub fn new(capacity: usize, worker: u16, workers: u16, ports: (u16, u16)) -> FlowTable {
        assert!(workers >= 1 && worker < workers);
        assert!(capacity >= 1 && capacity < u32::MAX as usize);
        let mut t = FlowTable {
            slab: Vec::with_capacity(capacity),
            live: vec![false; capacity],
            // Slot 0 on top of the stack, so slots fill in order.
            free: (0..capacity as u32).rev().collect(),
            by_client: Index::with_capacity(capacity),
            by_snat: Index::with_capacity(capacity),
            seed: 0,
            keys: [HashKey::new(0); 4],
            capacity,
            high_water: 0,
            hand: 0,
            worker,
            workers,
            ports,
            evicted: None,
            owned: owned_ports(ports, worker, workers),
            in_use: DestPorts::new(),
            mirror: None,
            client6: vec![[0; 16]; capacity],
        };
        t.reseed(random_seed());
        t.prefault();
        t
    }

    /// Sets the seed and the hash keys made from it.
    fn reseed(&mut self, seed: u64) {
        self.seed = seed;
        self.keys = [
            HashKey::new(seed),
            HashKey::new(seed.rotate_left(17)),
            HashKey::new(seed.rotate_left(41)),
            HashKey::new(seed.rotate_left(29)),
        ];
    }

    /// Touches every page of the slab and of both tables once, so that no
    /// new flow takes a page fault (a trip into the kernel) on the fast path:
    /// the memory is reserved up front, as a packet mempool is.
    fn prefault(&mut self) {
        let blank = Flow {
            key: ClientKey {
                client: Ipv4Addr::UNSPECIFIED,
                client_port: 0,
                published: 0,
                protocol: 0,
                v6: false,
            },
            task_addr: Ipv4Addr::UNSPECIFIED,
            task_id: TaskId(u32::MAX),
            task_index: 0,
            snapshot_gen: 0,
            vtep: Ipv4Addr::UNSPECIFIED,
            target: 0,
            snat_port: 0,
            last_seen: 0,
            hash: 0,
            client_mac: [0; 6],
            client_mac_valid: false,
            state: FlowState::Closed,
            client_next: 0,
            task_next: 0,
            delta_addrs: 0,
            delta_l4: 0,
            preserve: false,
            held_reset: false,
        };
        self.slab.resize(self.capacity, blank);
        // Zeroed pages are mapped on first touch: touch one entry of each.
        for c in self.client6.iter_mut().step_by(4096 / 16) {
            c[0] = std::hint::black_box(1);
            c[0] = 0;
        }
        self.by_client.prefault();
        self.by_snat.prefault();
    }

    /// Replaces the random seed of an empty table with `seed`: for
    /// counts that must not depend on a seed (the instruction guard and
    /// `bench/run`: some seeds cluster the benchmark's consecutive client
    /// ports more than others). Production tables keep their random one.
    pub fn set_seed(&mut self, seed: u64) {
        assert!(self.is_empty(), "a seed changes where entries are");
        self.reseed(seed | 1);
    }

    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Slots ever used (the sweep's range).
    pub fn high_water(&self) -> usize {
        self.high_water
    }

    /// The worker that owns SNAT port `port` among `workers`.
    #[inline]
    pub fn owner(port: u16, workers: u16) -> u16 {
        port % workers
    }

    #[inline(always)]
    pub fn client_hash(&self, k: &ClientKey) -> u64 {
        self.keys[0].hash(k.packed())
    }

    #[inline(always)]
    fn snat_hash(&self, k: &SnatKey) -> u64 {
        self.keys[1].hash(k.packed())
    }

    /// Looks a client key up with its hash (`client_hash`), which a
    /// following `insert` reuses.
    #[inline]
    pub fn lookup_client_hashed(&self, k: &ClientKey, hash: u64) -> Option<u32> {
        self.by_client
            .find(hash, |s| self.slab[s as usize].key == *k)
    }

    /// The digest an IPv6 client address has in its key: keyed by the
    /// table's secret seed, so that chosen addresses cannot be made to
    /// share digests (and hash buckets) any more than chosen IPv4
    /// addresses can.
    #[inline]
    pub fn digest6(&self, addr: &[u8; 16]) -> Ipv4Addr {
        let (hi, lo) = addr.split_at(8);
        let hi = u64::from_ne_bytes(hi.try_into().expect("8 bytes"));
        let lo = u64::from_ne_bytes(lo.try_into().expect("8 bytes"));
        Ipv4Addr::from(self.keys[3].hash2(hi, lo))
    }

    /// Looks up an IPv6 client's key (its `client` the [`Self::digest6`] of
    /// `addr`) with its hash (`client_hash`).
    #[inline]
    pub fn lookup_client6_hashed(&self, k: &ClientKey, addr: &[u8; 16], hash: u64) -> Option<u32> {
        self.by_client.find(hash, |s| {
            self.slab[s as usize].key == *k && self.client6[s as usize] == *addr
        })
    }

    /// The IPv6 client of the flow in `slot` (meaningful when its key is
    /// `v6`).
    #[inline]
    pub fn client6(&self, slot: u32) -> &[u8; 16] {
        &self.client6[slot as usize]
    }

    /// Records the IPv6 client of the flow just inserted in `slot` (its
    /// key `v6`, its `client` the [`Self::digest6`] of `addr`). Separate
    /// from `insert_hashed`, so that an IPv4 client's insert does not
    /// carry the address.
    #[inline]
    pub fn set_client6(&mut self, slot: u32, addr: &[u8; 16]) {
        debug_assert!(self.slab[slot as usize].key.v6);
        self.client6[slot as usize] = *addr;
        if let Some(m) = &mut self.mirror {
            m.put(slot, &self.slab[slot as usize], addr);
        }
    }

    #[inline]
    pub fn lookup_client(&self, k: &ClientKey) -> Option<u32> {
        self.lookup_client_hashed(k, self.client_hash(k))
    }

    #[inline(always)]
    pub fn lookup_snat(&self, k: &SnatKey) -> Option<u32> {
        let h = self.snat_hash(k);
        self.by_snat
            .find(h, |s| Self::snat_key(&self.slab[s as usize]) == *k)
    }

    #[inline]
    pub fn get(&self, slot: u32) -> &Flow {
        &self.slab[slot as usize]
    }

    #[inline]
    pub fn get_mut(&mut self, slot: u32) -> &mut Flow {
        &mut self.slab[slot as usize]
    }

    /// This worker's first SNAT port and how many it owns.
    #[inline(always)]
    fn owned_ports(&self) -> (u32, u32) {
        self.owned
    }

    /// Picks a SNAT port for a flow to `task:target`: the client's own port
    /// when it is in range, owned by this worker and free (as Linux NAT keeps
    /// source ports), else the first free owned port from a position chosen
    /// by the flow's hash (so that clients using the same few ports do not
    /// pile up in one dense range). `None` only when every port this worker
    /// owns is in use for that destination.
    #[inline(always)]
    fn alloc_port(&mut self, flow: &Flow) -> Option<u16> {
        let (protocol, task, target) = (flow.key.protocol, flow.task_addr, flow.target);
        let (client_port, hash) = (flow.key.client_port, flow.hash);
        let (first, count) = self.owned_ports();
        let n = u32::from(self.workers);
        // First flow to a destination: its bitmap (up to 8 KiB) is the one
        // allocation of a new flow, once per destination; emptied ones are
        // freed by `prune_ports`, off the fast path.
        let key = self.keys[2];
        let bits =
            self.in_use
                .get_or_add(dest(protocol, task, target), flow.task_index, key, count);
        let cp = u32::from(client_port);
        if cp >= first && (cp - first) % n == 0 && (cp - first) / n < count {
            let i = (cp - first) / n;
            if !bits.get(i) {
                bits.set(i, true);
                return Some(cp as u16);
            }
        }
        let i = bits.first_clear_from(hash % count.max(1), count)?;
        bits.set(i, true);
        Some((first + i * n) as u16)
    }

    /// Returns a SNAT port to its destination's bitmap.
    fn release_port(&mut self, f: &Flow) {
        if f.preserve {
            return;
        }
        let (first, count) = self.owned_ports();
        let n = u32::from(self.workers);
        let p = u32::from(f.snat_port);
        let key = dest(f.key.protocol, f.task_addr, f.target);
        if let Some(bits) = self.in_use.get_mut(key, f.task_index, self.keys[2]) {
            if p >= first && (p - first) % n == 0 && (p - first) / n < count {
                bits.set((p - first) / n, false);
            }
        }
    }

    /// Frees the port bitmaps of destinations with no flow (tasks that
    /// went away): called between batches, when the tables change.
    pub fn prune_ports(&mut self) {
        self.in_use.prune(self.keys[2]);
    }

    /// Inserts a new flow (its `snat_port` is chosen here). When the table
    /// is full, evicts the best candidate among a sample of slots: an
    /// unfinished or closed flow first, else the least recently seen.
    /// Returns the flow's slot; a flow evicted to make room waits in
    /// [`Self::take_evicted`] (not returned: returning it by value copied
    /// some 70 bytes on every new flow; bench/README.md, "Choices the counts
    /// made").
    pub fn insert(&mut self, flow: Flow, now: u32) -> Result<u32, InsertError> {
        let h = self.client_hash(&flow.key);
        self.insert_hashed(&flow, now, h)
    }

    /// `insert` with the key's hash from a preceding `lookup_client_hashed`.
    ///
    /// The common case, a flow translated to the sandbox's address with a
    /// free slot, is the short path; a flow that keeps its client's address
    /// and a full table go out of line, so that the short path keeps its
    /// values in registers (bench/README.md, "Choices the counts made").
    pub fn insert_hashed(
        &mut self,
        flow: &Flow,
        now: u32,
        client_hash: u64,
    ) -> Result<u32, InsertError> {
        debug_assert_eq!(client_hash, self.client_hash(&flow.key));
        if flow.preserve {
            return self.insert_preserving(flow, now, client_hash);
        }
        let snat_port = self.alloc_port(flow).ok_or(InsertError::PortsExhausted)?;
        self.place_new(flow, (false, snat_port), now, client_hash)
    }

    /// [`Self::insert_hashed`] of a flow that keeps its client's address
    /// (its client port is its "SNAT port").
    #[cold]
    #[inline(never)]
    fn insert_preserving(
        &mut self,
        flow: &Flow,
        now: u32,
        client_hash: u64,
    ) -> Result<u32, InsertError> {
        debug_assert_eq!(Self::owner(flow.key.client_port, self.workers), self.worker);
        // The same client port to the same task through another
        // published port would share the reply key: that flow is
        // translated to the sandbox instead, rather than lost.
        let kept = Flow {
            snat_port: flow.key.client_port,
            ..*flow
        };
        if self.lookup_snat(&Self::snat_key(&kept)).is_none() {
            return self.place_new(flow, (true, kept.snat_port), now, client_hash);
        }
        let snat_port = self.alloc_port(flow).ok_or(InsertError::PortsExhausted)?;
        self.place_new(flow, (false, snat_port), now, client_hash)
    }

    /// Places a new flow with its NAT as chosen in a free slot, evicting a
    /// flow when there is none; gives the port back when it cannot.
    #[inline(always)]
    fn place_new(
        &mut self,
        flow: &Flow,
        nat: (bool, u16),
        now: u32,
        client_hash: u64,
    ) -> Result<u32, InsertError> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => self.make_room(flow, nat, now)?,
        };
        self.place(slot, flow, nat, client_hash);
        Ok(slot)
    }

    /// A slot for a new flow in a full table: a flow evicted (the best
    /// candidate among a sample of slots, see [`Self::insert`]), or the
    /// flow's port given back and `Full`.
    #[cold]
    #[inline(never)]
    fn make_room(&mut self, flow: &Flow, nat: (bool, u16), now: u32) -> Result<u32, InsertError> {
        if let Some(victim) = self.eviction_candidate(now) {
            self.evicted = Some(self.remove(victim));
            if let Some(slot) = self.free.pop() {
                return Ok(slot);
            }
        }
        self.release_nat(flow, nat);
        Err(InsertError::Full)
    }

    /// Gives back the SNAT port `insert_hashed` took for `flow` (with its
    /// `(preserve, snat_port)` as chosen) when it could not place it.
    #[cold]
    fn release_nat(&mut self, flow: &Flow, (preserve, snat_port): (bool, u16)) {
        self.release_port(&Flow {
            preserve,
            snat_port,
            ..*flow
        });
    }

    /// The flow the last insert evicted, if it evicted one: to be taken
    /// right after each insert (the next eviction replaces it).
    #[inline]
    pub fn take_evicted(&mut self) -> Option<Evicted> {
        self.evicted.take().map(Evicted)
    }

    /// Writes `flow` into the free `slot` and indexes it. Always inlined,
    /// as `alloc_port` is: with the short path, the preserving insert and
    /// `restore` calling them, the compiler left both out of line, at 42
    /// more per new flow (bench/README.md, "Choices the counts made").
    #[inline(always)]
    fn place(
        &mut self,
        slot: u32,
        flow: &Flow,
        (preserve, snat_port): (bool, u16),
        client_hash: u64,
    ) {
        let f = &mut self.slab[slot as usize];
        *f = *flow;
        (f.preserve, f.snat_port) = (preserve, snat_port);
        let sk = Self::snat_key(f);
        self.live[slot as usize] = true;
        self.high_water = self.high_water.max(slot as usize + 1);
        // The indexes were sized for `capacity` flows.
        self.by_client.insert(client_hash, slot);
        let sh = self.snat_hash(&sk);
        self.by_snat.insert(sh, slot);
        if let Some(m) = &mut self.mirror {
            m.put(
                slot,
                &self.slab[slot as usize],
                &self.client6[slot as usize],
            );
        }
    }

    /// Mirrors every flow, now and from now on, into `m`.
    pub fn set_mirror(&mut self, mut m: Box<dyn FlowMirror>) {
        for (slot, f) in self.iter() {
            m.put(slot, f, &self.client6[slot as usize]);
        }
        self.mirror = Some(m);
    }

    /// Puts back a flow carried over from another process (a takeover, a
    /// restart after a crash) with its own SNAT port. Refused: a flow
    /// whose keys are taken, whose port this worker does not own or has
    /// given out, or one that does not fit; nothing is evicted for it.
    /// Off the fast path: a restart's, once per flow.
    #[cold]
    #[inline(never)]
    pub fn restore(&mut self, flow: Flow) -> Result<u32, RestoreError> {
        let ch = self.client_hash(&flow.key);
        if self.lookup_client_hashed(&flow.key, ch).is_some()
            || self.lookup_snat(&Self::snat_key(&flow)).is_some()
        {
            return Err(RestoreError::Duplicate);
        }
        if flow.preserve {
            if flow.snat_port != flow.key.client_port
                || Self::owner(flow.key.client_port, self.workers) != self.worker
            {
                return Err(RestoreError::NotOwned);
            }
        } else {
            let (first, count) = self.owned_ports();
            let n = u32::from(self.workers);
            let p = u32::from(flow.snat_port);
            if p < first || (p - first) % n != 0 || (p - first) / n >= count {
                return Err(RestoreError::NotOwned);
            }
            let key = dest(flow.key.protocol, flow.task_addr, flow.target);
            let bits = self
                .in_use
                .get_or_add(key, flow.task_index, self.keys[2], count);
            let i = (p - first) / n;
            if bits.get(i) {
                return Err(RestoreError::Duplicate);
            }
            bits.set(i, true);
        }
        let Some(slot) = self.free.pop() else {
            self.release_port(&flow);
            return Err(RestoreError::Full);
        };
        self.place(slot, &flow, (flow.preserve, flow.snat_port), ch);
        Ok(slot)
    }

    /// The SNAT port range (inclusive) this table gives ports from.
    pub fn snat_ports(&self) -> (u16, u16) {
        self.ports
    }

    /// The live flows, in slot order.
    pub fn live_flows(&self) -> impl Iterator<Item = &Flow> {
        self.slab[..self.high_water]
            .iter()
            .zip(&self.live[..self.high_water])
            .filter(|(_, live)| **live)
            .map(|(f, _)| f)
    }

    #[inline]
    pub fn snat_key(f: &Flow) -> SnatKey {
        SnatKey {
            task: f.task_addr,
            target: f.target,
            snat_port: f.snat_port,
            protocol: f.key.protocol,
            peer: if f.preserve {
                f.key.client
            } else {
                Ipv4Addr::UNSPECIFIED
            },
        }
    }

    /// Removes the flow in `slot` and returns it.
    pub fn remove(&mut self, slot: u32) -> Flow {
        let f = self.slab[slot as usize];
        debug_assert!(self.live[slot as usize]);
        self.release_port(&f);
        let ch = self.client_hash(&f.key);
        self.by_client.remove(ch, slot);
        let sh = self.snat_hash(&Self::snat_key(&f));
        self.by_snat.remove(sh, slot);
        self.live[slot as usize] = false;
        self.free.push(slot);
        if let Some(m) = &mut self.mirror {
            m.clear(slot);
        }
        f
    }

    fn eviction_candidate(&mut self, now: u32) -> Option<u32> {
        let n = self.high_water;
        if n == 0 {
            return None;
        }
        let mut best: Option<(u32, bool, u32)> = None; // (slot, finished, age)
        for _ in 0..EVICTION_SAMPLE.min(n) {
            self.hand = (self.hand + 1) % n;
            if !self.live[self.hand] {
                continue;
            }
            let f = &self.slab[self.hand];
            let unfinished = !matches!(f.state, FlowState::Established | FlowState::Udp);
            let age = now.wrapping_sub(f.last_seen);
            let better = match best {
                None => true,
                Some((_, bu, ba)) => (unfinished && !bu) || (unfinished == bu && age > ba),
            };
            if better {
                best = Some((self.hand as u32, unfinished, age));
            }
        }
        best.map(|b| b.0)
    }

    /// Examines up to `budget` slots from the clock hand and calls `expire`
    /// on each live flow whose idle time exceeds `timeout(flow)`; those flows
    /// are removed, `max_removed` at most (a removal costs far more than a
    /// look: a table whose flows all expire at once must not stall its
    /// worker). Returns the number removed.
    pub fn sweep(
        &mut self,
        now: u32,
        (budget, max_removed): (usize, usize),
        timeout: impl Fn(&Flow) -> u32,
        mut expire: impl FnMut(&Flow),
    ) -> usize {
        let n = self.high_water;
        if n == 0 {
            return 0;
        }
        let mut removed = 0;
        for _ in 0..budget.min(n) {
            if removed == max_removed {
                break;
            }
            self.hand = (self.hand + 1) % n;
            if !self.live[self.hand] {
                continue;
            }
            let f = self.slab[self.hand];
            if now.wrapping_sub(f.last_seen) > timeout(&f) {
                expire(&f);
                self.remove(self.hand as u32);
                removed += 1;
            } else if let Some(m) = &mut self.mirror {
                m.refresh(self.hand as u32, &f);
            }
        }
        removed
    }

    /// Iterates over live flows (slot, flow); for control-plane reports.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Flow)> {
        self.slab
            .iter()
            .enumerate()
            .filter(|(i, _)| self.live[*i])
            .map(|(i, f)| (i as u32, f))
    }

    /// Removes every flow for which `pred` holds, calling `each` first.
    pub fn remove_where(
        &mut self,
        mut pred: impl FnMut(&Flow) -> bool,
        mut each: impl FnMut(&Flow),
    ) -> usize {
        let slots: Vec<u32> = self
            .iter()
            .filter(|(_, f)| pred(f))
            .map(|(s, _)| s)
            .collect();
        for &s in &slots {
            each(&self.slab[s as usize]);
            self.remove(s);
        }
        slots.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A TCP flow in SYN-SENT from 198.18.0.1:`client_port` to task
    /// 198.18.128.`task`.
    pub(crate) fn flow(client_port: u16, task: u8) -> Flow {
        Flow {
            key: ClientKey {
                client: Ipv4Addr::new(198, 18, 0, 1),
                client_port,
                published: 8080,
                protocol: 6,
                v6: false,
            },
            task_addr: Ipv4Addr::new(198, 18, 128, task),
            task_id: TaskId(u32::from(task)),
            task_index: 0,
            snapshot_gen: 0,
            vtep: Ipv4Addr::new(198, 18, 0, 11),
            target: 80,
            snat_port: 0,
            last_seen: 0,
            hash: u32::from(client_port).wrapping_mul(2_654_435_761),
            client_mac: [0; 6],
            client_mac_valid: false,
            state: FlowState::SynSent,
            client_next: 0,
            task_next: 0,
            delta_addrs: 0,
            delta_l4: 0,
            preserve: false,
            held_reset: false,
        }
    }

    #[test]
    fn flow_fits_a_cache_line() {
        assert!(
            std::mem::size_of::<Flow>() <= 64,
            "{}",
            std::mem::size_of::<Flow>()
        );
    }

    #[test]
    fn documented_memory_matches_the_indexes_entries() {
        for max in [1000usize, 1 << 20, 3 << 20] {
            let entries = (max * 4).div_ceil(3).next_power_of_two();
            let want = max * (std::mem::size_of::<Flow>() + 5 + 16) + 2 * entries * 8;
            assert_eq!(table_bytes(max), want, "max {max}");
        }
        assert_eq!(table_bytes(1 << 20), 117 << 20);
    }

    #[test]
    fn ipv6_clients_are_told_apart_by_their_whole_address() {
        let mut t = FlowTable::new(16, 0, 1, (1024, 65535));
        let a: [u8; 16] = "2001:2::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
        let b: [u8; 16] = "2001:2::2".parse::<std::net::Ipv6Addr>().unwrap().octets();
        let key6 = |addr: &[u8; 16], t: &FlowTable| ClientKey {
            client: t.digest6(addr),
            v6: true,
            ..flow(40000, 1).key
        };
        let mut slots = Vec::new();
        for addr in [&a, &b] {
            let k = key6(addr, &t);
            let h = t.client_hash(&k);
            assert_eq!(t.lookup_client6_hashed(&k, addr, h), None);
            let f = Flow {
                key: k,
                ..flow(40000, 1)
            };
            let slot = t.insert_hashed(&f, 0, h).unwrap();
            t.set_client6(slot, addr);
            assert_eq!(t.client6(slot), addr);
            slots.push(slot);
        }
        for (addr, slot) in [&a, &b].into_iter().zip(&slots) {
            let k = key6(addr, &t);
            assert_eq!(
                t.lookup_client6_hashed(&k, addr, t.client_hash(&k)),
                Some(*slot)
            );
        }
        // A key with the right digest but another address is another flow.
        let forged = key6(&a, &t);
        assert_eq!(
            t.lookup_client6_hashed(&forged, &b, t.client_hash(&forged)),
            None
        );
        // An IPv4 client whose address equals a digest is not an IPv6 one.
        let v4 = ClientKey {
            v6: false,
            ..forged
        };
        assert_eq!(t.lookup_client(&v4), None);
        // The digest is keyed: another table digests the same address
        // differently (2^-32 odds of a false failure).
        let other = FlowTable::new(16, 0, 1, (1024, 65535));
        assert_ne!(other.digest6(&a), t.digest6(&a));
        t.remove(slots[0]);
        let k = key6(&a, &t);
        assert_eq!(t.lookup_client6_hashed(&k, &a, t.client_hash(&k)), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn keeps_client_port_when_free() {
        let mut t = FlowTable::new(16, 0, 1, (1024, 65535));
        let s = t.insert(flow(40000, 4), 0).unwrap();
        assert_eq!(t.get(s).snat_port, 40000);
        // Same client port from another client to the same task: another port.
        let mut f = flow(40000, 4);
        f.key.client = Ipv4Addr::new(198, 18, 0, 9);
        let s2 = t.insert(f, 0).unwrap();
        let p2 = t.get(s2).snat_port;
        assert!(
            p2 != 40000 && (1024..=65535).contains(&p2),
            "another port: {p2}"
        );
        // To another task the same SNAT port is free again (NAT tuple).
        let mut f = flow(40000, 5);
        f.key.client = Ipv4Addr::new(198, 18, 0, 10);
        let s3 = t.insert(f, 0).unwrap();
        assert_eq!(t.get(s3).snat_port, 40000);
        let k = FlowTable::snat_key(t.get(s2));
        assert_eq!(t.lookup_snat(&k), Some(s2));
    }

    #[test]
    fn ports_belong_to_their_worker() {
        for w in 0..3u16 {
            let mut t = FlowTable::new(64, w, 3, (1024, 65535));
            for cp in [1024u16, 1025, 1026, 65535, 500] {
                let s = t.insert(flow(cp, 4), 0).unwrap();
                let p = t.get(s).snat_port;
                assert_eq!(FlowTable::owner(p, 3), w, "client port {cp} -> {p}");
                assert!((1024..=65535).contains(&p));
            }
        }
    }

    /// The pattern of a proxy or a large NAT in front of the cluster: 10
    /// addresses x 10 000 consecutive source ports to three tasks. The
    /// kept client ports form dense blocks; a port is still found for
    /// every flow (the old linear probe of 256 ports refused ~9 % here).
    #[test]
    fn dense_client_port_blocks_never_trap_the_allocator() {
        let mut t = FlowTable::new(100_000, 0, 1, (1024, 65535));
        for a in 0..10u8 {
            for p in 0..10_000u16 {
                let mut f = flow(20_000 + p, 4 + (u32::from(p) % 3) as u8);
                f.key.client = Ipv4Addr::new(198, 18, 1, a);
                f.hash = u32::from(a) << 16 | u32::from(p);
                t.insert(f, 0)
                    .unwrap_or_else(|e| panic!("address {a} port {p}: {e:?}"));
            }
        }
        assert_eq!(t.len(), 100_000);
    }

    /// Every port of a destination is found, then exhaustion is real, and
    /// a freed port is found again.
    #[test]
    fn every_free_port_is_found() {
        for (workers, worker) in [(1u16, 0u16), (3, 2)] {
            let ports = (1024u16, 65535u16);
            let mut t = FlowTable::new(70_000, worker, workers, ports);
            let owned = (1024..=65535u32)
                .filter(|p| p % u32::from(workers) == u32::from(worker))
                .count();
            let mut slots = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for i in 0..owned as u32 {
                let mut f = flow(1024, 4); // every client on port 1024
                f.key.client = Ipv4Addr::from(0xc612_0000 + i);
                f.hash = i.wrapping_mul(2_654_435_761);
                let s = t.insert(f, 0).unwrap_or_else(|e| panic!("flow {i}: {e:?}"));
                assert!(seen.insert(t.get(s).snat_port), "port given twice");
                slots.push(s);
            }
            let mut f = flow(1024, 4);
            f.key.client = Ipv4Addr::new(198, 19, 255, 255);
            assert_eq!(t.insert(f, 0).unwrap_err(), InsertError::PortsExhausted);
            // Another destination is not affected.
            assert!(t.insert(flow(1024, 5), 0).is_ok());
            // A freed port is found again, wherever the scan starts.
            let freed = t.remove(slots[owned / 2]).snat_port;
            f.hash = 12345;
            let s = t.insert(f, 0).unwrap();
            assert_eq!(t.get(s).snat_port, freed);
        }
    }

    #[test]
    fn ports_exhaust_cleanly() {
        let mut t = FlowTable::new(1000, 0, 1, (2000, 2063));
        for i in 0..64u16 {
            let mut f = flow(2000, 4);
            f.key.client_port = 3000 + i;
            t.insert(f, 0).unwrap();
        }
        let mut f = flow(2000, 4);
        f.key.client_port = 5000;
        assert_eq!(t.insert(f, 0).unwrap_err(), InsertError::PortsExhausted);
    }

    /// Destinations beyond the first index's room (it doubles), pruned
    /// once their flows are gone, the others' ports still where they were.
    #[test]
    fn port_bitmaps_of_many_destinations_grow_and_are_pruned() {
        let mut t = FlowTable::new(4096, 0, 1, (1024, 65535));
        let mut slots = Vec::new();
        for task in 0..200u16 {
            for port in [7000u16, 7001] {
                let mut f = flow(port, 1);
                f.task_addr = Ipv4Addr::from(0xc612_8000 + u32::from(task));
                f.key.client = Ipv4Addr::from(0xc612_4000 + u32::from(task));
                slots.push((task, t.insert(f, 0).unwrap()));
            }
        }
        // Every destination kept the clients' ports: each bitmap is its own.
        assert!(
            slots
                .iter()
                .all(|&(_, s)| [7000, 7001].contains(&t.get(s).snat_port))
        );
        for &(task, s) in &slots {
            if task % 2 == 0 {
                t.remove(s);
            }
        }
        t.prune_ports();
        assert_eq!(t.in_use.dests.len(), 100);
        for &(task, s) in &slots {
            if task % 2 == 1 {
                let f = *t.get(s);
                // Taken still: a second flow from the same client port to
                // the same task gets another port.
                let mut g = f;
                g.key.client = Ipv4Addr::new(198, 18, 99, 9);
                let s2 = t.insert(g, 0).unwrap();
                assert_ne!(t.get(s2).snat_port, f.snat_port, "task {task}");
                t.remove(s2);
            }
        }
    }

    /// A task number's recent destination is a hint: two target ports of
    /// one task, tasks whose numbers share an entry and a task renumbered
    /// by a new snapshot each keep their own destination's ports, taken
    /// and given back.
    #[test]
    fn a_task_numbers_recent_destination_is_only_a_hint() {
        let mut t = FlowTable::new(64, 0, 1, (1024, 65535));
        // (task, target port, task number), in an order where each insert
        // finds another destination recent for its number.
        let dests = [
            (1u8, 80u16, 0u32),
            (1, 81, 0),
            (2, 80, RECENT as u32),
            (3, 80, 0),
            (2, 80, 5),
        ];
        let mut slots = Vec::new();
        let mut taken = std::collections::HashSet::new();
        for round in 0..3u8 {
            for (i, &(task, target, number)) in dests.iter().enumerate() {
                let mut f = flow(7000, task);
                f.key.client = Ipv4Addr::new(198, 18, 1 + round, i as u8);
                (f.target, f.task_index) = (target, number);
                let s = t.insert(f, 0).unwrap();
                let g = t.get(s);
                assert!(taken.insert((g.task_addr, g.target, g.snat_port)));
                // A destination's first flow keeps the client's port: its
                // bitmap was its own, not another's found by the hint.
                if round == 0 && i < 4 {
                    assert_eq!(g.snat_port, 7000, "{:?}", dests[i]);
                }
                slots.push(s);
            }
        }
        assert_eq!(t.in_use.dests.len(), 4);
        for s in slots {
            t.remove(s);
        }
        // Every port went back to its own bitmap.
        assert!(t.in_use.dests.iter().all(|d| d.1.used == 0));
        t.prune_ports();
        assert!(t.in_use.dests.is_empty());
    }

    #[test]
    fn eviction_prefers_unfinished_flows() {
        let mut t = FlowTable::new(8, 0, 1, (1024, 65535));
        for i in 0..8u16 {
            let mut f = flow(10000 + i, 4);
            f.state = if i == 5 {
                FlowState::SynSent
            } else {
                FlowState::Established
            };
            f.last_seen = 0;
            t.insert(f, 0).unwrap();
        }
        t.insert(flow(20000, 4), 100).unwrap();
        let ev = t.take_evicted();
        assert_eq!(ev.unwrap().0.key.client_port, 10005);
        assert!(t.take_evicted().is_none(), "taken once");
        assert_eq!(t.len(), 8);
        // With only established flows, the oldest goes.
        for s in 0..8u32 {
            let f = t.get_mut(s);
            f.state = FlowState::Established;
            f.last_seen = 50 + s;
        }
        let oldest = (0..8u32).min_by_key(|&s| t.get(s).last_seen).unwrap();
        let key = t.get(oldest).key;
        t.insert(flow(20001, 4), 100).unwrap();
        let ev = t.take_evicted();
        assert_eq!(ev.unwrap().0.key, key);
        assert_eq!(t.lookup_client(&key), None);
    }

    #[test]
    fn sweep_expires_idle_flows_only() {
        let mut t = FlowTable::new(8, 0, 1, (1024, 65535));
        for i in 0..4u16 {
            let mut f = flow(10000 + i, 4);
            f.last_seen = u32::from(i) * 1000;
            t.insert(f, 0).unwrap();
        }
        let mut expired = vec![];
        let n = t.sweep(
            3500,
            (100, usize::MAX),
            |_| 2000,
            |f| expired.push(f.key.client_port),
        );
        assert_eq!(n, 2);
        expired.sort();
        assert_eq!(expired, vec![10000, 10001]);
        assert_eq!(t.len(), 2);
        // Both indexes agree after removal and reuse.
        let s = t.insert(flow(10000, 4), 3600).unwrap();
        assert_eq!(t.lookup_client(&t.get(s).key), Some(s));
        assert_eq!(t.lookup_snat(&FlowTable::snat_key(t.get(s))), Some(s));
    }

    /// A sweep removes `max_removed` flows at most and the next one goes
    /// on from there: all due flows go, a bounded number per sweep.
    #[test]
    fn a_sweep_removes_at_most_its_bound_and_the_next_goes_on() {
        let mut t = FlowTable::new(64, 0, 1, (1024, 65535));
        for i in 0..40u16 {
            t.insert(flow(10000 + i, 4), 0).unwrap();
        }
        let mut removed = Vec::new();
        let mut sweeps = 0;
        while !t.is_empty() {
            let n = t.sweep(5000, (64, 16), |_| 100, |f| removed.push(f.key.client_port));
            assert!(n <= 16, "{n} removed in one sweep");
            sweeps += 1;
            assert!(sweeps <= 4, "a bounded sweep still makes progress");
        }
        removed.sort();
        assert_eq!(removed, (10000..10040).collect::<Vec<_>>());
        assert_eq!(sweeps, 3);
        // Their SNAT ports are free again: the same clients get flows.
        for i in 0..40u16 {
            t.insert(flow(10000 + i, 4), 5000).unwrap();
        }
    }

    #[test]
    fn tick_wraparound() {
        let mut t = FlowTable::new(8, 0, 1, (1024, 65535));
        let mut f = flow(10000, 4);
        f.last_seen = u32::MAX - 10;
        t.insert(f, 0).unwrap();
        assert_eq!(
            t.sweep(5, (8, usize::MAX), |_| 100, |_| {}),
            0,
            "16 ticks idle across the wrap"
        );
        assert_eq!(t.sweep(200, (8, usize::MAX), |_| 100, |_| {}), 1);
    }
}
