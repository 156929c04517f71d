//! Arbitrary bytes into the icmp parser: no panic, no out-of-bounds; what
//! parses re-emits to the same representation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshgate::wire::icmp;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = icmp::Packet::new_checked(data) { if let Ok(r) = icmp::Repr::parse(&p) { assert_eq!(r.buffer_len(), data.len()); } }
});
