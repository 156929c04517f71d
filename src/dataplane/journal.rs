//! The crash journal: a worker's flow table mirrored slot by slot into
//! memory that outlives the process (a shared file mapping under `/run`,
//! see `xdp::shm`), so that a meshgate restarted after SIGKILL or a panic
//! finds every flow the dead one had, with its task and SNAT port.
//!
//! Layout: a [`handover`] header with [`JOURNAL_MAGIC`], `count` = the
//! table's slots and checksum 0; then one [`RECORD_LEN`]-byte slot per
//! table slot, holding a handover record whose byte 3 is the slot's seal
//! ([`LIVE`] when it holds a flow).
//!
//! Invariants:
//! - a slot is unsealed, written, then sealed again, in program order
//!   (compiler fences): a process killed in between leaves an unsealed
//!   slot, which a reader skips — that one flow is lost, a half-written
//!   one is never used;
//! - writes happen when a flow is placed or removed and when the expiry
//!   sweep finds a flow's TCP state changed (within about a second): no
//!   write on the per-packet path of an established flow;
//! - idle times are not kept (that would be a write per packet): a
//!   restored flow starts idle, so it lives at most one more timeout;
//! - [`read`] trusts nothing: a foreign or mismatched header refuses the
//!   whole journal, a sealed slot that does not decode is counted and
//!   skipped.

use std::sync::atomic::{Ordering, compiler_fence};

use super::flow::{Flow, FlowMirror};
use super::handover::{
    self, FlowRecord, HEADER_LEN, HandoverError, Origin, RECORD_LEN, decode_header, decode_record,
    encode_header, encode_record,
};

pub const JOURNAL_MAGIC: [u8; 8] = *b"MGJRNL\0\0";
/// The seal of a slot that holds a flow.
pub const LIVE: u8 = 0xa5;
const SEAL: usize = 3;
const STATE: usize = 1;

/// Bytes of a journal for a table of `slots` flows.
pub fn journal_len(slots: usize) -> usize {
    HEADER_LEN + slots * RECORD_LEN
}

/// A journal over `mem` (a fresh, zeroed mapping of [`journal_len`]
/// bytes).
pub struct Journal<M> {
    mem: M,
}

impl<M: AsMut<[u8]> + Send> Journal<M> {
    /// Writes the header for `origin` into `mem`.
    pub fn new(mut mem: M, origin: Origin) -> Journal<M> {
        let bytes = mem.as_mut();
        let slots = bytes.len().saturating_sub(HEADER_LEN) / RECORD_LEN;
        if let Some(h) = bytes.get_mut(..HEADER_LEN) {
            h.copy_from_slice(&encode_header(JOURNAL_MAGIC, origin, slots as u32, 0));
        }
        Journal { mem }
    }

    fn slot(&mut self, slot: u32) -> Option<&mut [u8]> {
        let at = HEADER_LEN + slot as usize * RECORD_LEN;
        self.mem.as_mut().get_mut(at..at + RECORD_LEN)
    }
}

/// Writes `body` into the slot between an unseal and a seal.
fn sealed(s: &mut [u8], body: impl FnOnce(&mut [u8])) {
    s[SEAL] = 0;
    compiler_fence(Ordering::Release);
    body(s);
    compiler_fence(Ordering::Release);
    s[SEAL] = LIVE;
}

impl<M: AsMut<[u8]> + Send> FlowMirror for Journal<M> {
    fn put(&mut self, slot: u32, flow: &Flow, client6: &[u8; 16]) {
        let rec = encode_record(&FlowRecord::of(flow, 0, client6));
        if let Some(s) = self.slot(slot) {
            sealed(s, |s| {
                s[..SEAL].copy_from_slice(&rec[..SEAL]);
                s[SEAL + 1..].copy_from_slice(&rec[SEAL + 1..]);
            });
        }
    }

    fn clear(&mut self, slot: u32) {
        if let Some(s) = self.slot(slot) {
            s[SEAL] = 0;
        }
    }

    fn refresh(&mut self, slot: u32, flow: &Flow) {
        let state = handover::state_byte(flow.state);
        if let Some(s) = self.slot(slot) {
            if s[SEAL] == LIVE && s[STATE] != state {
                sealed(s, |s| s[STATE] = state);
            }
        }
    }
}

/// What a journal held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalContents {
    pub origin: Origin,
    /// The sealed flows, idle 0.
    pub flows: Vec<FlowRecord>,
    /// Sealed slots that did not decode, and slots with a foreign seal.
    pub unreadable: usize,
}

/// Reads a journal a stopped process left.
pub fn read(bytes: &[u8]) -> Result<JournalContents, HandoverError> {
    let (origin, slots, checksum) = decode_header(bytes, JOURNAL_MAGIC)?;
    if checksum != 0 {
        return Err(HandoverError::Header(
            "a journal's checksum field is 0".into(),
        ));
    }
    let mut out = JournalContents {
        origin,
        flows: Vec::new(),
        unreadable: 0,
    };
    for s in bytes[HEADER_LEN..].chunks_exact(RECORD_LEN).take(slots) {
        match s[SEAL] {
            0 => {}
            LIVE => {
                let mut r = [0u8; RECORD_LEN];
                r.copy_from_slice(s);
                r[SEAL] = 0;
                match decode_record(&r) {
                    Ok(mut rec) => {
                        rec.idle_ms = 0;
                        out.flows.push(rec);
                    }
                    Err(_) => out.unreadable += 1,
                }
            }
            _ => out.unreadable += 1,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::flow::tests::flow;
    use crate::dataplane::flow::{FlowState, FlowTable};
    use std::sync::{Arc, Mutex};

    fn origin() -> Origin {
        Origin {
            worker: 0,
            workers: 1,
            snat_ports: (1024, 65535),
        }
    }

    fn journal(slots: usize) -> Journal<Vec<u8>> {
        Journal::new(vec![0; journal_len(slots)], origin())
    }

    #[test]
    fn sealed_flows_are_read_back_and_cleared_ones_are_not() {
        let mut j = journal(8);
        let (a, mut b) = (flow(40000, 1), flow(40001, 2));
        j.put(2, &a, &[0; 16]);
        j.put(5, &b, &[0; 16]);
        let got = read(&j.mem).unwrap();
        assert_eq!(got.origin, origin());
        assert_eq!(got.unreadable, 0);
        assert_eq!(
            got.flows,
            vec![
                FlowRecord::of(&a, 0, &[0; 16]),
                FlowRecord::of(&b, 0, &[0; 16])
            ]
        );
        // The sweep's refresh carries a state change; a removal clears.
        b.state = FlowState::Established;
        j.refresh(5, &b);
        j.clear(2);
        let got = read(&j.mem).unwrap();
        assert_eq!(got.flows, vec![FlowRecord::of(&b, 0, &[0; 16])]);
        // Out of range: nothing written, nothing panics.
        j.put(8, &a, &[0; 16]);
        assert_eq!(read(&j.mem).unwrap().flows.len(), 1);
    }

    #[test]
    fn an_ipv6_clients_flow_is_journaled_with_its_address() {
        let mut j = journal(2);
        let mut f = flow(40000, 1);
        f.key.v6 = true;
        f.client_mac = [2, 0, 0, 0, 0, 9];
        let a: std::net::Ipv6Addr = "2001:2::1".parse().unwrap();
        j.put(1, &f, &a.octets());
        let got = read(&j.mem).unwrap();
        assert_eq!(got.flows.len(), 1);
        assert_eq!(got.flows[0].client6, Some((a, [2, 0, 0, 0, 0, 9])));
        assert!(got.flows[0].client.is_unspecified());
    }

    #[test]
    fn a_torn_slot_is_skipped_and_a_foreign_journal_refused() {
        let mut j = journal(4);
        j.put(0, &flow(40000, 1), &[0; 16]);
        j.put(1, &flow(40001, 1), &[0; 16]);
        // Killed between unseal and seal: the slot is skipped.
        j.mem[HEADER_LEN + SEAL] = 0;
        // A seal no writer makes, and a sealed slot that does not decode.
        j.mem[HEADER_LEN + RECORD_LEN + SEAL] = 0x5a;
        j.put(2, &flow(40002, 1), &[0; 16]);
        j.mem[HEADER_LEN + 2 * RECORD_LEN] = 99; // neither TCP nor UDP
        let got = read(&j.mem).unwrap();
        assert!(got.flows.is_empty(), "{got:?}");
        assert_eq!(got.unreadable, 2);
        let handover = handover::encode(origin(), &[]);
        assert_eq!(read(&handover), Err(HandoverError::Foreign));
        let mut short = journal(4).mem;
        short.truncate(HEADER_LEN + RECORD_LEN);
        assert!(matches!(read(&short), Err(HandoverError::Length(_))));
    }

    /// What the table told its mirror: (call, slot, the flow's state).
    type Call = (&'static str, u32, FlowState);

    /// A mirror that records what the table tells it.
    #[derive(Clone, Default)]
    struct Calls(Arc<Mutex<Vec<Call>>>);

    impl FlowMirror for Calls {
        fn put(&mut self, slot: u32, f: &Flow, _: &[u8; 16]) {
            self.0.lock().unwrap().push(("put", slot, f.state));
        }
        fn clear(&mut self, slot: u32) {
            self.0
                .lock()
                .unwrap()
                .push(("clear", slot, FlowState::Closed));
        }
        fn refresh(&mut self, slot: u32, f: &Flow) {
            self.0.lock().unwrap().push(("refresh", slot, f.state));
        }
    }

    #[test]
    fn the_table_tells_its_mirror_every_placement_removal_and_sweep() {
        let mut t = FlowTable::new(16, 0, 1, (1024, 65535));
        let s0 = t.insert(flow(40000, 1), 0).unwrap();
        let calls = Calls::default();
        t.set_mirror(Box::new(calls.clone()));
        // Flows placed before the mirror are put when it is set.
        assert_eq!(
            calls.0.lock().unwrap()[..],
            [("put", s0, FlowState::SynSent)]
        );
        let s1 = t.insert(flow(40001, 1), 0).unwrap();
        t.get_mut(s1).state = FlowState::Established;
        t.remove(s0);
        // The sweep refreshes live flows it keeps.
        t.sweep(1, (16, usize::MAX), |_| 1000, |_| {});
        let c = calls.0.lock().unwrap().clone();
        assert_eq!(
            c,
            [
                ("put", s0, FlowState::SynSent),
                ("put", s1, FlowState::SynSent),
                ("clear", s0, FlowState::Closed),
                ("refresh", s1, FlowState::Established),
            ]
        );
    }
}
