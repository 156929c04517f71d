//! A flow's state as the packets tell it: TCP transitions, the task a
//! flow is linked to across snapshots, the shared active/inactive counts,
//! the end of a flow.

use super::State;
use crate::dataplane::flow::{Flow, FlowState};
use crate::dataplane::tables::{Snapshot, TaskEntry};
use crate::wire::tcp;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;

/// Takes a flow's share out of its task's shared flow counts.
pub(super) fn release_shared(snap: &Snapshot, gen32: u32, f: &Flow) {
    let idx = if f.snapshot_gen == gen32 {
        Some(f.task_index)
    } else {
        snap.task_index.get(&f.task_id).copied()
    };
    if let Some(i) = idx {
        let sh = &snap.tasks[i as usize].shared;
        let c = if f.state.is_active() {
            &sh.active
        } else {
            &sh.inactive
        };
        // Saturating: a count never goes below zero even if a flow was
        // counted under an earlier generation of the task.
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(1))
        });
    }
}

/// Resolves a flow's task in the current snapshot, re-linking it after a
/// snapshot change. `None`: the task is gone.
#[inline(always)]
pub(super) fn flow_task<'s>(
    snap: &'s Snapshot,
    gen32: u32,
    flow: &mut Flow,
) -> Option<&'s TaskEntry> {
    if flow.snapshot_gen != gen32 {
        let i = *snap.task_index.get(&flow.task_id)?;
        flow.task_index = i;
        flow.snapshot_gen = gen32;
        // An IPv6 client's MAC is the neighbour its packets came from,
        // not the neighbour table's: it stays.
        flow.client_mac_valid = flow.key.v6;
    }
    snap.tasks.get(flow.task_index as usize)
}

pub(super) fn request_resolution(st: &State, addr: Ipv4Addr) {
    if let Some(q) = &st.resolve {
        // A full queue means the control thread already has work queued;
        // the next packet asks again.
        let _ = q.push(addr);
    }
}

pub(super) fn end_flow(snap: &Snapshot, st: &mut State, slot: u32) {
    let f = st.flows.remove(slot);
    release_shared(snap, st.gen32, &f);
    st.events.flows_ended += 1;
}

/// `a` comes after `b` in sequence space (RFC 1982 arithmetic).
#[inline]
pub(super) fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Applies a TCP segment's flags to the flow state; returns the shared
/// counter move (from inactive to active or back) to apply.
#[inline(always)]
pub(super) fn tcp_transition(flow: &mut Flow, flags: u8, from_task: bool) -> Option<bool> {
    use tcp::flags::*;
    let before = flow.state;
    // Most segments change nothing: said first, without a store.
    if flags & (RST | FIN) == 0 && !(from_task && before == FlowState::SynSent) {
        return None;
    }
    flow.state = if flags & RST != 0 {
        FlowState::Closed
    } else if flags & FIN != 0 && before != FlowState::Closed {
        FlowState::Closing
    } else if from_task && before == FlowState::SynSent {
        FlowState::Established
    } else {
        before
    };
    (before.is_active() != flow.state.is_active()).then_some(flow.state.is_active())
}

pub(super) fn move_shared(task: &TaskEntry, to_active: bool) {
    let sh = &task.shared;
    let (from, to) = if to_active {
        (&sh.inactive, &sh.active)
    } else {
        (&sh.active, &sh.inactive)
    };
    // Out of one state before into the other, so that a reader never
    // counts the flow twice; Release: see `TaskShared::counts`.
    let _ = from.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(1))
    });
    to.fetch_add(1, Ordering::Release);
}
