//! Schedulers: which task a new flow of a service goes to.
//!
//! Each [`SchedTable`] is built once per snapshot from the service's tasks and
//! is read-only afterwards. A task of weight 0 is *draining*: it appears in no
//! table, so it gets no new flows, while its existing flows continue (they
//! never consult the scheduler again). So is a task whose node is not
//! resolved (no outer header yet): a new flow sent there would only be
//! dropped; the snapshot built when the node resolves includes it again.
//!
//! - `rr`: Swarm's (IPVS's) round robin; one shared atomic cursor per
//!   service makes the rotation exact across workers.
//! - `wrr`: the same cursor over an interleaved sequence in which each task
//!   appears in proportion to its weight (nginx's smooth weighted round
//!   robin, so heavy tasks are not picked in bursts).
//! - `lc`: fewest flows per unit of weight (IPVS's `wlc`), from the shared
//!   per-task flow counts.
//! - `maglev`: Maglev consistent hashing (Eisenbud et al., NSDI 2016) of the
//!   flow's client address and port. The permutation of each task depends
//!   only on the task's address, so every ingress node builds the same table
//!   and sends a given client to the same task without shared state; removing
//!   one task moves little more than that task's share of clients.

use super::desc::Scheduler;
use super::tables::{ServiceShared, TaskEntry};
use std::sync::atomic::Ordering;

/// Size of a Maglev lookup table: a prime well above 100 x the task count
/// keeps the imbalance under about 1 % (the paper's advice).
pub const MAGLEV_TABLE_SIZE: usize = 65537;

/// Longest weighted round-robin sequence; larger weight sums are scaled down.
const WRR_MAX_SEQUENCE: u64 = 1 << 16;

#[derive(Debug, Clone)]
pub enum SchedTable {
    /// Eligible task indices (weight > 0), in configuration order.
    Rr(Vec<u32>),
    /// Task indices, each repeated in proportion to its weight, interleaved.
    Wrr(Vec<u32>),
    /// Eligible task indices with their weights.
    Lc(Vec<(u32, u32)>),
    /// Lookup table of task indices; empty when no task is eligible.
    Maglev(Vec<u32>),
}

impl SchedTable {
    /// Builds the table for the tasks `members` (indices into `tasks`).
    pub fn build(kind: Scheduler, members: &[u32], tasks: &[TaskEntry]) -> SchedTable {
        let eligible: Vec<(u32, u32)> = members
            .iter()
            .filter(|&&i| tasks[i as usize].eligible())
            .map(|&i| (i, tasks[i as usize].weight))
            .collect();
        match kind {
            Scheduler::Rr => SchedTable::Rr(eligible.iter().map(|e| e.0).collect()),
            Scheduler::Wrr => SchedTable::Wrr(wrr_sequence(&eligible)),
            Scheduler::Lc => SchedTable::Lc(eligible),
            Scheduler::Maglev => {
                let keyed: Vec<(u32, u32, u64)> = eligible
                    .iter()
                    .map(|&(i, w)| (i, w, u64::from(u32::from(tasks[i as usize].addr))))
                    .collect();
                SchedTable::Maglev(maglev_table(&keyed, MAGLEV_TABLE_SIZE))
            }
        }
    }

    /// Picks the task for a new flow with hash `flow_hash`, or `None` when
    /// the service has no eligible task.
    #[inline(always)]
    pub fn pick(&self, shared: &ServiceShared, tasks: &[TaskEntry], flow_hash: u32) -> Option<u32> {
        match self {
            SchedTable::Rr(v) | SchedTable::Wrr(v) => {
                if v.is_empty() {
                    return None;
                }
                // Relaxed: the cursor orders nothing but itself; each new
                // flow takes a distinct value.
                let c = shared.cursor.fetch_add(1, Ordering::Relaxed);
                Some(v[(c % v.len() as u64) as usize])
            }
            SchedTable::Lc(v) => {
                let mut best: Option<(u32, u64, u64)> = None;
                for &(i, w) in v {
                    let load = u64::from(tasks[i as usize].shared.load());
                    let w = u64::from(w);
                    // load/w < best_load/best_w, without division.
                    if best.is_none_or(|(_, bl, bw)| load * bw < bl * w) {
                        best = Some((i, load, w));
                    }
                }
                best.map(|b| b.0)
            }
            SchedTable::Maglev(t) => {
                if t.is_empty() {
                    None
                } else {
                    Some(t[flow_hash as usize % t.len()])
                }
            }
        }
    }

    /// Task indices eligible for new flows.
    pub fn eligible(&self) -> Vec<u32> {
        let mut v: Vec<u32> = match self {
            SchedTable::Rr(v) | SchedTable::Wrr(v) | SchedTable::Maglev(v) => v.clone(),
            SchedTable::Lc(v) => v.iter().map(|e| e.0).collect(),
        };
        v.sort_unstable();
        v.dedup();
        v
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Smooth weighted round robin: each step adds every weight to its task's
/// credit and picks the task with the most credit, which pays the total.
fn wrr_sequence(eligible: &[(u32, u32)]) -> Vec<u32> {
    if eligible.is_empty() {
        return Vec::new();
    }
    let g = eligible
        .iter()
        .fold(0u64, |g, &(_, w)| gcd(g, u64::from(w)));
    let mut weights: Vec<u64> = eligible.iter().map(|&(_, w)| u64::from(w) / g).collect();
    let total: u64 = weights.iter().sum();
    if total > WRR_MAX_SEQUENCE {
        for w in &mut weights {
            *w = (*w * WRR_MAX_SEQUENCE / total).max(1);
        }
    }
    let total: u64 = weights.iter().sum();
    let mut credit = vec![0i64; weights.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (k, w) in weights.iter().enumerate() {
            credit[k] += *w as i64;
            if credit[k] > credit[best] {
                best = k;
            }
        }
        credit[best] -= total as i64;
        seq.push(eligible[best].0);
    }
    seq
}

/// FNV-1a over the 8 bytes of `key`, with a seed: stable across processes
/// and machines, which Maglev's agreement between ingress nodes requires.
fn fnv1a(key: u64, seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in key.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche (from splitmix64) so nearby addresses spread.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Maglev population (paper, Pseudocode 1) with weights: per round, each
/// backend earns `weight / max_weight` of a turn and claims its next
/// preferred free slot for every whole turn earned.
/// `backends`: (task index, weight, stable key).
pub fn maglev_table(backends: &[(u32, u32, u64)], m: usize) -> Vec<u32> {
    if backends.is_empty() {
        return Vec::new();
    }
    let mut sorted: Vec<(u32, u32, u64)> = backends.to_vec();
    // The fill order must not depend on configuration order.
    sorted.sort_by_key(|b| b.2);
    let max_w = sorted.iter().map(|b| b.1).max().unwrap_or(1).max(1) as f64;
    let perms: Vec<(usize, usize)> = sorted
        .iter()
        .map(|b| {
            let offset = (fnv1a(b.2, 0x5bd1_e995) % m as u64) as usize;
            let skip = (fnv1a(b.2, 0x1b87_3593) % (m as u64 - 1) + 1) as usize;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; sorted.len()];
    let mut credit = vec![0f64; sorted.len()];
    let mut table = vec![u32::MAX; m];
    let mut filled = 0;
    'outer: loop {
        for (i, b) in sorted.iter().enumerate() {
            credit[i] += f64::from(b.1) / max_w;
            while credit[i] >= 1.0 {
                credit[i] -= 1.0;
                let (offset, skip) = perms[i];
                let mut c = (offset + next[i] * skip) % m;
                while table[c] != u32::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                table[c] = b.0;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'outer;
                }
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::tables::{OUTER_TEMPLATE_LEN, OuterTemplate, TaskId, TaskShared};
    use crate::wire::MacAddr;
    use std::collections::HashMap;
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    fn tasks(weights: &[u32]) -> Vec<TaskEntry> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let addr = Ipv4Addr::new(198, 18, 128, 10 + i as u8);
                TaskEntry {
                    id: TaskId(i as u32),
                    service: 0,
                    addr,
                    mac: MacAddr::docker(addr),
                    node: Ipv4Addr::new(198, 18, 0, 11),
                    weight: w,
                    outer: Some(OuterTemplate {
                        bytes: [0; OUTER_TEMPLATE_LEN],
                    }),
                    local: false,
                    preserve: false,
                    node_to_task: 0,
                    shared: Arc::new(TaskShared::default()),
                }
            })
            .collect()
    }

    fn members(n: usize) -> Vec<u32> {
        (0..n as u32).collect()
    }

    fn counts(t: &SchedTable, ts: &[TaskEntry], n: usize) -> HashMap<u32, usize> {
        let shared = ServiceShared::default();
        let mut c = HashMap::new();
        for h in 0..n as u32 {
            let hash = h.wrapping_mul(2_654_435_761);
            *c.entry(t.pick(&shared, ts, hash).unwrap()).or_default() += 1;
        }
        c
    }

    #[test]
    fn rr_rotates_in_order_and_skips_drained() {
        let ts = tasks(&[1, 0, 1, 1]);
        let t = SchedTable::build(Scheduler::Rr, &members(4), &ts);
        let shared = ServiceShared::default();
        let picks: Vec<u32> = (0..6).map(|_| t.pick(&shared, &ts, 0).unwrap()).collect();
        assert_eq!(picks, vec![0, 2, 3, 0, 2, 3]);
    }

    #[test]
    fn every_scheduler_skips_unresolved_tasks() {
        let mut ts = tasks(&[1, 1, 1]);
        ts[1].outer = None;
        for kind in [
            Scheduler::Rr,
            Scheduler::Wrr,
            Scheduler::Lc,
            Scheduler::Maglev,
        ] {
            let t = SchedTable::build(kind, &members(3), &ts);
            let shared = ServiceShared::default();
            for h in 0..100u32 {
                let pick = t.pick(&shared, &ts, h.wrapping_mul(2_654_435_761));
                assert!(matches!(pick, Some(0 | 2)), "{kind}: {pick:?}");
            }
        }
    }

    #[test]
    fn no_eligible_task() {
        let ts = tasks(&[0, 0]);
        for kind in [
            Scheduler::Rr,
            Scheduler::Wrr,
            Scheduler::Lc,
            Scheduler::Maglev,
        ] {
            let t = SchedTable::build(kind, &members(2), &ts);
            assert_eq!(t.pick(&ServiceShared::default(), &ts, 7), None, "{kind}");
        }
    }

    #[test]
    fn wrr_follows_weights_smoothly() {
        let ts = tasks(&[5, 1, 1]);
        let t = SchedTable::build(Scheduler::Wrr, &members(3), &ts);
        let SchedTable::Wrr(seq) = &t else { panic!() };
        assert_eq!(seq.len(), 7);
        assert_eq!(seq.iter().filter(|&&i| i == 0).count(), 5);
        // Smooth: the heavy task is never picked more than 3 times in a row.
        assert_eq!(seq, &vec![0, 0, 1, 0, 2, 0, 0]);
        let c = counts(&t, &ts, 700);
        assert_eq!((c[&0], c[&1], c[&2]), (500, 100, 100));
    }

    #[test]
    fn wrr_scales_huge_weights() {
        let ts = tasks(&[65535, 65534, 1]);
        let SchedTable::Wrr(seq) = SchedTable::build(Scheduler::Wrr, &members(3), &ts) else {
            panic!()
        };
        assert!(seq.len() as u64 <= WRR_MAX_SEQUENCE + 3);
        assert!(seq.contains(&2), "a small weight keeps at least one slot");
    }

    #[test]
    fn lc_picks_least_loaded_per_weight() {
        let ts = tasks(&[1, 2, 1]);
        ts[0].shared.active.store(3, Ordering::Relaxed);
        ts[1].shared.active.store(4, Ordering::Relaxed); // 2 per unit of weight
        ts[2].shared.inactive.store(5, Ordering::Relaxed);
        let t = SchedTable::build(Scheduler::Lc, &members(3), &ts);
        assert_eq!(t.pick(&ServiceShared::default(), &ts, 0), Some(1));
        ts[1].shared.active.store(8, Ordering::Relaxed);
        assert_eq!(t.pick(&ServiceShared::default(), &ts, 0), Some(0));
    }

    #[test]
    fn maglev_is_balanced() {
        let ts = tasks(&[1; 7]);
        let SchedTable::Maglev(table) = SchedTable::build(Scheduler::Maglev, &members(7), &ts)
        else {
            panic!()
        };
        assert_eq!(table.len(), MAGLEV_TABLE_SIZE);
        let mut c = [0usize; 7];
        for &i in &table {
            c[i as usize] += 1;
        }
        let ideal = MAGLEV_TABLE_SIZE as f64 / 7.0;
        for (i, &n) in c.iter().enumerate() {
            let dev = (n as f64 - ideal).abs() / ideal;
            assert!(dev < 0.01, "task {i}: {n} slots, {:.2}% off", dev * 100.0);
        }
    }

    #[test]
    fn maglev_weights() {
        let ts = tasks(&[2, 1, 1]);
        let SchedTable::Maglev(table) = SchedTable::build(Scheduler::Maglev, &members(3), &ts)
        else {
            panic!()
        };
        let heavy = table.iter().filter(|&&i| i == 0).count() as f64 / table.len() as f64;
        assert!((heavy - 0.5).abs() < 0.01, "{heavy}");
    }

    #[test]
    fn maglev_small_disruption_on_removal() {
        let ts = tasks(&[1; 10]);
        let SchedTable::Maglev(before) = SchedTable::build(Scheduler::Maglev, &members(10), &ts)
        else {
            panic!()
        };
        // Remove task 3: build from the other nine.
        let rest: Vec<u32> = (0..10).filter(|&i| i != 3).collect();
        let SchedTable::Maglev(after) = SchedTable::build(Scheduler::Maglev, &rest, &ts) else {
            panic!()
        };
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b != a && **b != 3)
            .count();
        let frac = moved as f64 / before.len() as f64;
        // Slots of the surviving tasks that changed owner: the paper reports
        // a few percent at this table size.
        assert!(frac < 0.05, "{:.2}% of surviving slots moved", frac * 100.0);
        assert!(after.iter().all(|&i| i != 3));
    }

    #[test]
    fn maglev_agrees_regardless_of_order() {
        let ts = tasks(&[1; 5]);
        let a = SchedTable::build(Scheduler::Maglev, &[0, 1, 2, 3, 4], &ts);
        let b = SchedTable::build(Scheduler::Maglev, &[4, 2, 0, 3, 1], &ts);
        let (SchedTable::Maglev(a), SchedTable::Maglev(b)) = (a, b) else {
            panic!()
        };
        assert_eq!(a, b);
    }
}
