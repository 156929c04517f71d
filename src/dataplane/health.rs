//! Passive health (outlier detection): what a service's tasks say about
//! themselves by how they answer new connections, without probes.
//!
//! Two failures count, both TCP (a datagram carries no answer to judge):
//! a task answers a client's SYN with a reset (nothing listens: a stopping
//! graceful server, a crashed process), or leaves a SYN unanswered until
//! the client retransmits it (a killed container, a frozen node). A reset
//! ejects its task at once, as it is a definite answer; unanswered SYNs
//! eject after [`CONSECUTIVE_UNANSWERED`] in a row, as one can be a lost
//! packet. A task's SYN-ACK clears its failures.
//!
//! An ejected task gets no new flows for [`BASE_EJECTION_MS`] times the
//! number of its ejections in a row (capped at [`MAX_EJECTION_MS`]), as
//! Envoy's outlier detection escalates; its flows continue. Never more
//! than half of a service's eligible tasks are ejected at once: what is
//! left must carry the service, and when every task refuses, the clients
//! must hear it.
//!
//! The pipeline acts on it in three places: a new flow skips ejected
//! tasks; a task's reset to a SYN is held back (once per connection)
//! while another task of the service is healthy, so that the client's
//! retransmitted SYN reaches that one instead of failing; and a
//! retransmitted SYN moves to another healthy task.
//!
//! The state lives in [`TaskHealth`], shared by all workers and kept
//! across snapshots with the task's other shared state. Each field is its
//! own Relaxed atomic: they order nothing else, and a decision made on a
//! slightly stale value is one flow's choice. Ejection decisions take a
//! per-service try-lock, so that two workers failing the same service at
//! once cannot together pass the cap; a worker that finds it taken leaves
//! the ejection to the next failure.

use super::tables::{ServiceEntry, Snapshot, TaskEntry};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

/// Unanswered SYNs in a row that eject a task.
pub const CONSECUTIVE_UNANSWERED: u32 = 3;
/// The first ejection's length; the n-th in a row lasts n times as long.
pub const BASE_EJECTION_MS: u32 = 5_000;
/// The longest ejection.
pub const MAX_EJECTION_MS: u32 = 60_000;
/// A SYN seen again sooner than this after the last one is a duplicate,
/// not the client's retransmission (whose first timeout is 1 s, RFC 6298).
pub const MIN_RETRANSMISSION_MS: u32 = 500;

/// A task's health, shared by the workers (see the module's comment).
#[derive(Debug, Default)]
pub struct TaskHealth {
    /// Worker clock (ms, wrapping) at which the current ejection ends;
    /// 0 when never ejected.
    ejected_until: AtomicU32,
    /// Failures since the last SYN-ACK.
    failures: AtomicU32,
    /// Ejections in a row: the next one lasts this many + 1 base times.
    streak: AtomicU32,
    /// Ejections ever.
    ejections: AtomicU64,
}

/// What a recorded failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Counted; the task stays in selection.
    Counted,
    /// The task is ejected from now on.
    Ejected,
    /// The task would have been ejected, but the service's cap (half its
    /// tasks) is reached.
    Capped,
}

/// The failures [`record_failure`] knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A reset in answer to a SYN.
    Refused,
    /// A SYN the client had to send again.
    Unanswered,
}

/// `a` is later than `b` on the wrapping millisecond clock.
#[inline(always)]
fn later(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl TaskHealth {
    /// Whether the task is out of new-flow selection at `now`.
    #[inline(always)]
    pub fn ejected(&self, now: u32) -> bool {
        let until = self.ejected_until.load(Relaxed);
        until != 0 && later(until, now)
    }

    /// Not ejected, and no failure since its last SYN-ACK.
    pub fn healthy(&self, now: u32) -> bool {
        !self.ejected(now) && self.failures.load(Relaxed) == 0
    }

    /// Milliseconds left of the current ejection (0: not ejected).
    pub fn ejected_for(&self, now: u32) -> u32 {
        let until = self.ejected_until.load(Relaxed);
        if until != 0 && later(until, now) {
            until.wrapping_sub(now)
        } else {
            0
        }
    }

    /// Ejections since the task appeared.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Relaxed)
    }

    /// The task answered a SYN: its failures are forgiven, and its streak
    /// of ejections too once it has served for a base ejection's time
    /// since the last one ended. Loads first: this runs once per new
    /// connection, and most tasks have nothing to forgive.
    pub fn success(&self, now: u32) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
        if self.streak.load(Relaxed) != 0 {
            let until = self.ejected_until.load(Relaxed);
            if later(now, until.wrapping_add(BASE_EJECTION_MS)) {
                self.streak.store(0, Relaxed);
            }
        }
    }
}

/// Records a failure of task `ti` (an index into `snap.tasks`) at `now`,
/// and ejects it when the failure calls for it and the cap allows.
pub fn record_failure(snap: &Snapshot, ti: u32, failure: Failure, now: u32) -> Outcome {
    let Some(task) = snap.tasks.get(ti as usize) else {
        return Outcome::Counted;
    };
    let h = &task.shared.health;
    let failures = h.failures.fetch_add(1, Relaxed).saturating_add(1);
    let due = match failure {
        Failure::Refused => true,
        Failure::Unanswered => failures >= CONSECUTIVE_UNANSWERED,
    };
    if !due || h.ejected(now) {
        return Outcome::Counted;
    }
    let Some(svc) = snap.services.get(task.service as usize) else {
        return Outcome::Counted;
    };
    let lock = &svc.shared.ejecting;
    if lock
        .compare_exchange(false, true, Acquire, Relaxed)
        .is_err()
    {
        return Outcome::Counted;
    }
    let outcome = eject_locked(snap, svc, task, now);
    lock.store(false, Release);
    outcome
}

/// [`record_failure`]'s ejection, under the service's try-lock.
fn eject_locked(snap: &Snapshot, svc: &ServiceEntry, task: &TaskEntry, now: u32) -> Outcome {
    let (mut eligible_n, mut ejected_n) = (0usize, 0usize);
    for &i in &svc.tasks {
        let t = &snap.tasks[i as usize];
        if t.eligible() {
            eligible_n += 1;
            ejected_n += usize::from(t.shared.health.ejected(now));
        }
    }
    if (ejected_n + 1) * 2 > eligible_n {
        return Outcome::Capped;
    }
    let h = &task.shared.health;
    let streak = h.streak.fetch_add(1, Relaxed).saturating_add(1);
    let length = BASE_EJECTION_MS.saturating_mul(streak).min(MAX_EJECTION_MS);
    // 0 means "never ejected": an end that falls on it moves by 1 ms.
    h.ejected_until
        .store(now.wrapping_add(length).max(1), Relaxed);
    h.ejections.fetch_add(1, Relaxed);
    Outcome::Ejected
}

/// Whether a task of the same service other than `ti` is eligible and
/// healthy at `now`: a client sent away from `ti` has somewhere to go.
pub fn healthy_other(snap: &Snapshot, ti: u32, now: u32) -> bool {
    let Some(task) = snap.tasks.get(ti as usize) else {
        return false;
    };
    let Some(svc) = snap.services.get(task.service as usize) else {
        return false;
    };
    svc.tasks.iter().any(|&i| {
        let t = &snap.tasks[i as usize];
        i != ti && t.eligible() && t.shared.health.healthy(now)
    })
}

/// A task of `svc` for a new flow when the scheduler's choice is ejected
/// or is `avoid`: the first eligible task from position `start` on that
/// is neither (rotating, so that the flows a skipped task would have had
/// spread over the others). `None` when there is none.
#[cold]
#[inline(never)]
pub fn pick_other(
    svc: &ServiceEntry,
    tasks: &[TaskEntry],
    start: u32,
    avoid: u32,
    now: u32,
) -> Option<u32> {
    let n = svc.tasks.len();
    (0..n)
        .map(|k| svc.tasks[(start as usize + k) % n])
        .find(|&i| {
            let t = &tasks[i as usize];
            i != avoid && t.eligible() && !t.shared.health.ejected(now)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wrapping_clock_orders_across_the_wrap() {
        assert!(later(5, u32::MAX - 5));
        assert!(!later(u32::MAX - 5, 5));
        let h = TaskHealth::default();
        assert!(!h.ejected(0), "never ejected");
        h.ejected_until.store(10, Relaxed);
        assert!(h.ejected(u32::MAX - 100));
        assert!(h.ejected(9));
        assert!(!h.ejected(10));
        assert_eq!(h.ejected_for(4), 6);
        assert_eq!(h.ejected_for(11), 0);
    }

    #[test]
    fn success_forgives_failures_and_later_the_streak() {
        let h = TaskHealth::default();
        h.failures.store(2, Relaxed);
        h.streak.store(2, Relaxed);
        h.ejected_until.store(1_000, Relaxed);
        h.success(2_000);
        assert_eq!(h.failures.load(Relaxed), 0);
        assert_eq!(h.streak.load(Relaxed), 2, "too soon after the ejection");
        h.success(1_000 + BASE_EJECTION_MS + 1);
        assert_eq!(h.streak.load(Relaxed), 0);
    }
}
