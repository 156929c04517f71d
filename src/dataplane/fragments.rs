//! The datagrams in fragments a worker is carrying: which flow each one's
//! later fragments belong to.
//!
//! Only a datagram's first fragment carries its ports, so only it can be
//! matched to a flow. The pipeline enters the datagram here when its first
//! fragment passes (keyed by source, destination, protocol and IP
//! identification, RFC 791's reassembly key), with the flow's own key, and
//! its later fragments look that key up and take the same flow's
//! translation. As with Cilium's fragment map, a later fragment that
//! arrives before its first one cannot be matched: the XDP program passes
//! it to the kernel (only a datagram whose first fragment it saw is
//! meshgate's), and one that reaches the pipeline all the same finds
//! nothing here and is dropped (`fragment_no_first`). Fragments of one
//! datagram on one path come in order.
//!
//! Memory is fixed: [`CAPACITY`] entries of [`ENTRY_BYTES`] per worker,
//! set-associative ([`WAYS`] per set); a datagram entered where its set is
//! full of live ones replaces the oldest (counted as `fragments_evicted`).
//! An entry lives [`TIMEOUT_MS`]: the fragments of one datagram follow each
//! other within a round trip, and a later datagram reusing the
//! identification (65 536 of them per source) needs a fresh first fragment.

use super::flow::{ClientKey, SnatKey};

/// Entries per worker.
pub const CAPACITY: usize = 4096;
/// Entries per set.
pub const WAYS: usize = 4;
/// How long after its first fragment a datagram's later ones are taken.
pub const TIMEOUT_MS: u32 = 5_000;
/// Bytes per entry (the table's memory is `CAPACITY * ENTRY_BYTES`).
pub const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

/// Which of a worker's paths a datagram takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Dir {
    /// An IPv4 client's datagram to a published port.
    Client4,
    /// An IPv6 client's (`src` is its address's digest, `id` the fragment
    /// header's 32 bits).
    Client6,
    /// A task's datagram back to its client.
    Reply,
}

/// A datagram: RFC 791's reassembly key and the path it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragKey {
    pub src: u32,
    pub dst: u32,
    pub id: u32,
    pub protocol: u8,
    pub dir: Dir,
}

/// Where a datagram's later fragments go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To the worker that owns its flow (its first fragment went there).
    Worker(u16),
    /// The client's flow with this key (on this worker).
    Client(ClientKey),
    /// The flow a task's reply with this key belongs to (on this worker).
    Snat(SnatKey),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: FragKey,
    route: Route,
    /// When it was entered (ms, the pipeline's clock).
    at: u32,
}

/// One worker's datagrams in fragments.
pub struct FragTable {
    sets: Box<[[Option<Entry>; WAYS]]>,
    seed: u64,
}

/// What [`FragTable::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Into a free (or expired, or its own) entry.
    Free,
    /// In place of the oldest live datagram of its set.
    Evicted,
}

impl Default for FragTable {
    fn default() -> Self {
        Self::new()
    }
}

impl FragTable {
    pub fn new() -> FragTable {
        FragTable {
            sets: vec![[None; WAYS]; CAPACITY / WAYS].into_boxed_slice(),
            seed: super::flow::random_seed(),
        }
    }

    /// Fixes the hash's seed (the benchmarks' and tests' determinism).
    pub fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }

    fn set(&self, k: &FragKey) -> usize {
        let mut x = (u64::from(k.src) << 32 | u64::from(k.dst)) ^ self.seed;
        x ^= (u64::from(k.id) << 16 | u64::from(k.protocol) << 8 | k.dir as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (x ^ (x >> 31)) as usize % self.sets.len()
    }

    fn live(e: &Entry, now: u32) -> bool {
        now.wrapping_sub(e.at) < TIMEOUT_MS
    }

    /// Enters a datagram (its first fragment has passed at `now`).
    pub fn insert(&mut self, key: FragKey, route: Route, now: u32) -> Inserted {
        let s = self.set(&key);
        let set = &mut self.sets[s];
        let new = Some(Entry {
            key,
            route,
            at: now,
        });
        // Its own entry (a retransmitted first fragment), else a free or
        // expired one, else the oldest.
        if let Some(e) = set.iter_mut().find(|e| e.is_some_and(|e| e.key == key)) {
            *e = new;
            return Inserted::Free;
        }
        if let Some(e) = set
            .iter_mut()
            .find(|e| e.is_none_or(|e| !Self::live(&e, now)))
        {
            *e = new;
            return Inserted::Free;
        }
        let oldest = (0..WAYS)
            .max_by_key(|&i| set[i].map_or(0, |e| now.wrapping_sub(e.at)))
            .unwrap_or(0);
        set[oldest] = new;
        Inserted::Evicted
    }

    /// Where a later fragment of datagram `key` goes, if its first one
    /// passed less than [`TIMEOUT_MS`] ago.
    pub fn get(&self, key: &FragKey, now: u32) -> Option<Route> {
        self.sets[self.set(key)]
            .iter()
            .flatten()
            .find(|e| e.key == *key && Self::live(e, now))
            .map(|e| e.route)
    }

    /// Datagrams entered and not expired at `now`.
    pub fn len(&self, now: u32) -> usize {
        self.sets
            .iter()
            .flatten()
            .flatten()
            .filter(|e| Self::live(e, now))
            .count()
    }

    pub fn is_empty(&self, now: u32) -> bool {
        self.len(now) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn key(src: u32, id: u32) -> FragKey {
        FragKey {
            src,
            dst: 7,
            id,
            protocol: 17,
            dir: Dir::Client4,
        }
    }

    #[test]
    fn a_datagram_is_found_until_it_expires() {
        let mut t = FragTable::new();
        assert_eq!(t.insert(key(1, 9), Route::Worker(3), 100), Inserted::Free);
        assert_eq!(t.get(&key(1, 9), 100), Some(Route::Worker(3)));
        assert_eq!(
            t.get(&key(1, 9), 100 + TIMEOUT_MS - 1),
            Some(Route::Worker(3))
        );
        assert_eq!(t.get(&key(1, 9), 100 + TIMEOUT_MS), None, "expired");
        assert_eq!(t.get(&key(1, 8), 100), None, "another identification");
        let other_dir = FragKey {
            dir: Dir::Reply,
            ..key(1, 9)
        };
        assert_eq!(t.get(&other_dir, 100), None, "another path");
    }

    #[test]
    fn a_retransmitted_first_fragment_takes_its_own_entry() {
        let mut t = FragTable::new();
        t.insert(key(1, 9), Route::Worker(3), 0);
        let snat = Route::Snat(SnatKey {
            task: Ipv4Addr::new(198, 18, 128, 4),
            target: 80,
            snat_port: 40000,
            protocol: 17,
            peer: Ipv4Addr::UNSPECIFIED,
        });
        t.insert(key(1, 9), snat, 10);
        assert_eq!(t.get(&key(1, 9), 10), Some(snat));
        assert_eq!(t.len(10), 1);
    }

    /// Too many datagrams in flight: the table never grows, the newest
    /// are found, and what was lost was the oldest and is counted.
    #[test]
    fn too_many_in_flight_evicts_the_oldest_and_memory_stays_fixed() {
        let mut t = FragTable::new();
        let mut evicted = 0;
        t.set_seed(1);
        let n = CAPACITY as u32 * 4;
        // All within one timeout, a millisecond per eight datagrams.
        let now = |i: u32| i / 8;
        for i in 0..n {
            if t.insert(key(i, i), Route::Worker(0), now(i)) == Inserted::Evicted {
                evicted += 1;
            }
        }
        let end = now(n);
        let live = t.len(end);
        assert!(
            (CAPACITY * 9 / 10..=CAPACITY).contains(&live),
            "{live} live"
        );
        assert_eq!(evicted, n as usize - live, "every datagram lost is counted");
        let newest_found = (n - 64..n)
            .filter(|&i| t.get(&key(i, i), end).is_some())
            .count();
        assert!(newest_found >= 60, "{newest_found} of the newest 64 found");
        let oldest_found = (0..64)
            .filter(|&i| t.get(&key(i, i), end).is_some())
            .count();
        assert_eq!(oldest_found, 0, "the oldest went first");
        // Expired entries are taken before live ones.
        assert_eq!(
            t.insert(key(u32::MAX, 1), Route::Worker(0), end + TIMEOUT_MS + 10),
            Inserted::Free
        );
    }
}
