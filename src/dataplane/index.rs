//! An index from a key's hash to a flow's slot in the flow table's slab:
//! open addressing with linear probing over a power-of-two array of
//! 64-bit entries, no more than three quarters full.
//!
//! Each entry holds the low 32 bits of its key's hash (which also name its
//! home position) and its slot plus one; zero is empty. A lookup compares
//! the stored hash bits before it asks the caller to compare the keys, so
//! the slab is touched only for a likely match. Removal shifts the entries
//! after the hole back (Knuth's algorithm R for linear probing), so there
//! are no tombstones: a miss ends at the first empty entry whatever the
//! table has been through.
//!
//! It replaced hashbrown's `HashTable<u32>` for the flow table's two
//! indexes: an insert is a probe to the first empty entry and one store
//! (hashbrown also keeps control bytes, a mirrored group and a growth
//! count), and nothing ever grows, so no rehash closure is carried
//! (bench/README.md, "Choices the counts made").

/// The index. Sized once for the most entries it will hold.
#[derive(Debug, Clone)]
pub struct Index {
    entries: Box<[u64]>,
    len: usize,
    max: usize,
}

/// The entry for `hash` and `slot`.
#[inline(always)]
fn entry(hash: u64, slot: u32) -> u64 {
    (u64::from(hash as u32) << 32) | (u64::from(slot) + 1)
}

impl Index {
    /// Entries for `max` keys: the smallest power of two that holds them at
    /// three quarters full.
    pub fn entries_for(max: usize) -> usize {
        (max.max(1) * 4).div_ceil(3).next_power_of_two()
    }

    /// An empty index for at most `max` keys.
    pub fn with_capacity(max: usize) -> Index {
        let n = Self::entries_for(max);
        // The stored 32 hash bits name the home position.
        assert!(n <= 1 << 32, "an index of {max} keys");
        Index {
            entries: vec![0; n].into_boxed_slice(),
            len: 0,
            max,
        }
    }

    /// The most keys it was made for.
    pub fn capacity(&self) -> usize {
        self.max
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes every entry once (zero), so that the pages are mapped before
    /// the first packet needs them.
    pub fn prefault(&mut self) {
        for e in self.entries.iter_mut().step_by(4096 / 8) {
            *e = std::hint::black_box(0);
        }
    }

    /// The slot of the key whose hash is `hash`, `eq` telling whether a
    /// slot holds that key.
    #[inline(always)]
    pub fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let want = hash as u32;
        // The mask from the length: the compiler then sees
        // that every index is in bounds.
        let entries = &*self.entries;
        let mask = entries.len().wrapping_sub(1);
        let mut i = want as usize;
        loop {
            i &= mask;
            let e = *entries.get(i)?;
            if e == 0 {
                return None;
            }
            let slot = (e as u32).wrapping_sub(1);
            if (e >> 32) as u32 == want && eq(slot) {
                return Some(slot);
            }
            i += 1;
        }
    }

    /// Adds `slot` under `hash`; the key must not be in the index already,
    /// and there must be room (the flow table never holds more than the
    /// `max` it was made for).
    #[inline(always)]
    pub fn insert(&mut self, hash: u64, slot: u32) {
        debug_assert!(self.len < self.max);
        let entries = &mut *self.entries;
        let mask = entries.len().wrapping_sub(1);
        let mut i = hash as u32 as usize;
        loop {
            i &= mask;
            let Some(e) = entries.get_mut(i) else {
                return; // (no index is out of bounds)
            };
            if *e == 0 {
                *e = entry(hash, slot);
                break;
            }
            i += 1;
        }
        self.len += 1;
    }

    /// Removes `slot`, indexed under `hash`; false if it was not there.
    pub fn remove(&mut self, hash: u64, slot: u32) -> bool {
        let e = entry(hash, slot);
        let mask = self.entries.len() - 1;
        let mut hole = hash as u32 as usize & mask;
        loop {
            match self.entries[hole] {
                0 => return false,
                x if x == e => break,
                _ => hole = (hole + 1) & mask,
            }
        }
        // Move back every entry of the run after the hole that may live
        // there: one whose home is not cyclically between the hole and it.
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let x = self.entries[j];
            if x == 0 {
                break;
            }
            let home = (x >> 32) as usize & mask;
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.entries[hole] = x;
                hole = j;
            }
        }
        self.entries[hole] = 0;
        self.len -= 1;
        true
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        self.entries.fill(0);
        self.len = 0;
    }

    /// Bytes it allocates for `max` keys.
    pub fn bytes(max: usize) -> usize {
        Self::entries_for(max) * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A deterministic generator (xorshift) for the model test.
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn agrees_with_a_map_through_inserts_and_removals() {
        // Hashes drawn from a few values force long runs, shared home
        // positions and wrap-around at the array's end: the cases where a
        // backward shift could lose an entry or leave one unreachable.
        for spread in [4u64, 64, 1 << 40] {
            let max = 48;
            let mut ix = Index::with_capacity(max);
            let mut model: HashMap<u32, u64> = HashMap::new();
            let mut seed = 0x9e37_79b9 ^ spread;
            for _ in 0..20_000 {
                let r = rng(&mut seed);
                let slot = (r % max as u64) as u32;
                match model.get(&slot) {
                    Some(&h) => {
                        assert!(ix.remove(h, slot));
                        model.remove(&slot);
                    }
                    None => {
                        // High hash bits differ, low ones repeat.
                        let end = (ix.entries.len() as u64 - 2) * u64::from(r % 3 == 0);
                        let h = (rng(&mut seed) << 32) | (rng(&mut seed) % spread) | end;
                        ix.insert(h, slot);
                        model.insert(slot, h);
                    }
                }
                assert_eq!(ix.len(), model.len());
                for (&s, &h) in &model {
                    assert_eq!(ix.find(h, |x| x == s), Some(s), "slot {s} lost");
                }
            }
        }
    }

    #[test]
    fn a_miss_stops_at_the_first_empty_entry_and_compares_only_equal_hashes() {
        let mut ix = Index::with_capacity(8);
        ix.insert(5, 0);
        ix.insert(5 | (1 << 40), 1);
        let mut asked = Vec::new();
        assert_eq!(
            ix.find(5, |s| {
                asked.push(s);
                s == 1
            }),
            Some(1)
        );
        assert_eq!(asked, [0, 1]);
        asked.clear();
        assert_eq!(
            ix.find(6, |s| {
                asked.push(s);
                true
            }),
            None
        );
        assert!(asked.is_empty(), "no key compared for other hashes");
        assert!(!ix.remove(6, 0));
        assert!(ix.remove(5, 0));
        assert_eq!(ix.find(5 | (1 << 40), |s| s == 1), Some(1));
    }

    #[test]
    fn sized_at_three_quarters_full_at_most() {
        assert_eq!(Index::entries_for(1 << 20), 1 << 21);
        assert_eq!(Index::entries_for(3), 4);
        assert_eq!(Index::entries_for(4), 8);
        for max in [1usize, 7, 1000, 3 << 20] {
            assert!(max * 4 <= Index::entries_for(max) * 3, "{max}");
        }
        let mut ix = Index::with_capacity(3);
        for s in 0..3 {
            ix.insert(0, s);
        }
        for s in 0..3 {
            assert_eq!(ix.find(0, |x| x == s), Some(s));
        }
    }
}
