//! Arbitrary bytes as a crash journal left by a killed meshgate: flows or
//! a reason, never a panic; every flow comes from a sealed slot, none from
//! beyond the slots the header announces, and each starts idle.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshgate::dataplane::handover::{HEADER_LEN, RECORD_LEN};
use meshgate::dataplane::journal::read;

fuzz_target!(|data: &[u8]| {
    if let Ok(j) = read(data) {
        let slots = (data.len() - HEADER_LEN) / RECORD_LEN;
        assert!(j.flows.len() + j.unreadable <= slots);
        assert!(j.flows.iter().all(|f| f.idle_ms == 0));
    }
});
