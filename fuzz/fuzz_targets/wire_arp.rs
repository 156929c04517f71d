//! Arbitrary bytes into the arp parser: no panic, no out-of-bounds; what
//! parses re-emits to the same representation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshgate::wire::arp;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = arp::Packet::new_checked(data) { if let Ok(r) = arp::Repr::parse(&p) { let mut b = vec![0u8; r.buffer_len()]; r.emit(&mut arp::Packet::new_unchecked(&mut b[..])); assert_eq!(arp::Repr::parse(&arp::Packet::new_checked(&b[..]).unwrap()).unwrap(), r); } }
});
