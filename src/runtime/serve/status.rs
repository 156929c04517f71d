//! The status page: what `GET /` on the metrics listener shows, the JSON
//! it reads every second (`GET /status.json`, the API's `status` request,
//! `meshgate status --json`), and the per-second rates behind both.
//!
//! Rates are sampled by the control thread (at most once a second, from
//! the counters it already sums), not by the page: every viewer sees the
//! same numbers, a page opened a moment ago has its chart at once, and a
//! slow viewer costs the data plane nothing. The page itself is one HTML
//! file embedded in the binary, with its script and style inline: it works
//! offline and loads nothing from anywhere else.

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::stats::{LatencyView, Stats};
use crate::api::{ServiceView, TaskView};
use crate::dataplane::counters::TaskCounters;
use crate::dataplane::tables::TaskId;
use crate::runtime::swarm::follow::SwarmStatus;

/// The page at `/`.
pub const PAGE: &str = include_str!("status.html");

/// Seconds of forwarded rate the chart shows.
pub const HISTORY: usize = 120;

/// Everything the status page shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    /// This node's address (and IPv6 address, when it has one).
    pub node: Ipv4Addr,
    pub node6: Option<Ipv6Addr>,
    /// meshgate's version.
    pub version: String,
    /// `file` (services from the configuration file and the API) or
    /// `swarm` (from Docker).
    pub mode: String,
    pub uptime_seconds: f64,
    pub generation: u64,
    /// In swarm mode: Docker reads, the last one's age, the last error.
    pub swarm: Option<SwarmStatus>,
    pub services: Vec<StatusService>,
    pub flows: usize,
    /// Drops by reason (every reason, zeros included).
    pub drops: BTreeMap<String, u64>,
    pub drops_total: u64,
    /// Drops per second over the last sampled second.
    pub drops_per_second: f64,
    pub batch_latency_ns: LatencyView,
    /// The batch-latency histogram: buckets of doubling width.
    pub batch_histogram: Vec<Bucket>,
    pub rate: RateView,
}

/// One service on the page, with its tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusService {
    #[serde(flatten)]
    pub service: ServiceView,
    pub tasks: Vec<StatusTask>,
}

/// One task on the page: its view and its rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusTask {
    #[serde(flatten)]
    pub task: TaskView,
    pub rate: TaskRate,
}

/// Per second, over the last sampled second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskRate {
    pub packets_in: f64,
    pub bytes_in: f64,
    pub packets_out: f64,
    pub bytes_out: f64,
}

/// The node's forwarded rate now, and over the last [`HISTORY`] seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateView {
    /// Client → task packets per second (the events' `forwarded`).
    pub forwarded: f64,
    /// Task → client packets per second (`replies`).
    pub replies: f64,
    /// Oldest first, one point per sampled second.
    pub history: Vec<RatePoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RatePoint {
    /// Seconds since meshgate started.
    pub t: f64,
    pub forwarded: f64,
    pub replies: f64,
}

/// Batches whose processing took up to `le_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub le_ns: u64,
    pub count: u64,
}

/// The counters at one moment.
struct Sample {
    at: Instant,
    forwarded: u64,
    replies: u64,
    drops: u64,
    tasks: BTreeMap<TaskId, TaskCounters>,
}

/// Per-second rates from samples of the summed counters.
pub struct RateSampler {
    started: Instant,
    last: Option<Sample>,
    tasks: BTreeMap<TaskId, TaskRate>,
    drops: f64,
    history: VecDeque<RatePoint>,
}

impl RateSampler {
    pub fn new(started: Instant) -> RateSampler {
        RateSampler {
            started,
            last: None,
            tasks: BTreeMap::new(),
            drops: 0.0,
            history: VecDeque::with_capacity(HISTORY),
        }
    }

    /// Takes a sample when a second has passed since the last one (the
    /// control thread calls this every round; the counters are copied
    /// only when a sample is taken).
    pub fn sample(&mut self, now: Instant, st: &Stats) {
        if let Some(last) = &self.last {
            let dt = now.saturating_duration_since(last.at);
            if dt < Duration::from_secs(1) {
                return;
            }
            let per_s = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt.as_secs_f64();
            self.tasks = st
                .tasks
                .iter()
                .map(|(id, c)| {
                    let was = last.tasks.get(id).copied().unwrap_or_default();
                    let r = TaskRate {
                        packets_in: per_s(c.packets_in, was.packets_in),
                        bytes_in: per_s(c.bytes_in, was.bytes_in),
                        packets_out: per_s(c.packets_out, was.packets_out),
                        bytes_out: per_s(c.bytes_out, was.bytes_out),
                    };
                    (*id, r)
                })
                .collect();
            self.drops = per_s(st.drops.total(), last.drops);
            if self.history.len() == HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(RatePoint {
                t: now.saturating_duration_since(self.started).as_secs_f64(),
                forwarded: per_s(st.events.forwarded, last.forwarded),
                replies: per_s(st.events.replies, last.replies),
            });
        }
        self.last = Some(Sample {
            at: now,
            forwarded: st.events.forwarded,
            replies: st.events.replies,
            drops: st.drops.total(),
            tasks: st.tasks.clone(),
        });
    }

    pub fn task(&self, id: TaskId) -> TaskRate {
        self.tasks.get(&id).copied().unwrap_or_default()
    }

    pub fn drops(&self) -> f64 {
        self.drops
    }

    pub fn view(&self) -> RateView {
        let now = self.history.back().copied();
        RateView {
            forwarded: now.map_or(0.0, |p| p.forwarded),
            replies: now.map_or(0.0, |p| p.replies),
            history: self.history.iter().copied().collect(),
        }
    }
}

/// The batch-latency histogram in buckets of doubling width from 1 µs,
/// the last one holding everything slower; empty buckets below the first
/// batch and above the last are left out.
pub fn histogram(st: &Stats) -> Vec<Bucket> {
    let h = &st.batch_ns;
    let mut out = Vec::new();
    let mut below = 0;
    let mut le = 1_000u64;
    while le < 1_000_000_000 && below < h.len() {
        let upto = h.count_between(0, le);
        out.push(Bucket {
            le_ns: le,
            count: upto - below,
        });
        below = upto;
        le *= 2;
    }
    if below < h.len() {
        out.push(Bucket {
            le_ns: u64::MAX,
            count: h.len() - below,
        });
    }
    let first = out.iter().position(|b| b.count > 0).unwrap_or(out.len());
    out.drain(..first);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(packets: u64) -> TaskCounters {
        TaskCounters {
            packets_in: packets,
            bytes_in: packets * 100,
            packets_out: packets / 2,
            bytes_out: packets * 50,
            flows: 1,
        }
    }

    #[test]
    fn rates_are_deltas_over_a_second_or_more() {
        let t0 = Instant::now();
        let mut st = Stats::new(1);
        let mut r = RateSampler::new(t0);
        r.sample(t0, &st);
        st.events.forwarded = 1000;
        st.tasks.insert(TaskId(7), counters(1000));
        // Less than a second later: no new point.
        r.sample(t0 + Duration::from_millis(500), &st);
        assert!(r.view().history.is_empty());
        r.sample(t0 + Duration::from_secs(2), &st);
        let v = r.view();
        assert_eq!(v.history.len(), 1);
        assert_eq!(v.forwarded, 500.0);
        assert_eq!(r.task(TaskId(7)).packets_in, 500.0);
        assert_eq!(r.task(TaskId(7)).bytes_out, 25_000.0);
        assert_eq!(r.task(TaskId(8)), TaskRate::default());
        // Nothing moves: the rate falls to zero; the history is bounded.
        for s in 3..(3 + HISTORY as u64 + 5) {
            r.sample(t0 + Duration::from_secs(s), &st);
        }
        let v = r.view();
        assert_eq!(v.forwarded, 0.0);
        assert_eq!(v.history.len(), HISTORY);
        assert!(v.history.windows(2).all(|w| w[0].t < w[1].t));
    }

    #[test]
    fn histogram_buckets_hold_every_batch_once() {
        let mut st = Stats::new(1);
        for ns in [500u64, 1_500, 1_600, 3_000, 90_000, 5_000_000_000] {
            st.batch_ns.record(ns).unwrap();
        }
        let b = histogram(&st);
        assert_eq!(b.iter().map(|b| b.count).sum::<u64>(), 6);
        assert_eq!(
            b[0],
            Bucket {
                le_ns: 1_000,
                count: 1
            }
        );
        assert_eq!(
            b[1],
            Bucket {
                le_ns: 2_000,
                count: 2
            }
        );
        assert_eq!(b.last().unwrap().le_ns, u64::MAX);
        assert!(histogram(&Stats::new(1)).is_empty());
        let mut st = Stats::new(1);
        st.batch_ns.record(20_000).unwrap();
        assert_eq!(
            histogram(&st),
            [Bucket {
                le_ns: 32_000,
                count: 1
            }]
        );
    }

    /// The page is self-contained: nothing is loaded from elsewhere.
    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for needle in ["http://", "https://", "//cdn", "<link", "src=\""] {
            assert!(!PAGE.contains(needle), "the page names {needle}");
        }
        assert!(PAGE.contains("status.json"));
        assert!(PAGE.contains("name=\"viewport\""));
    }
}
