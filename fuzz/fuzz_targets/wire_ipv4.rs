//! Arbitrary bytes into the ipv4 parser: no panic, no out-of-bounds; what
//! parses re-emits to the same representation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshgate::wire::ipv4;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = ipv4::Packet::new_checked(data) { let _ = p.payload(); if let Ok(r) = ipv4::Repr::parse(&p) { let mut b = vec![0u8; r.buffer_len() + r.payload_len as usize]; r.emit(&mut ipv4::Packet::new_unchecked(&mut b[..])); assert_eq!(ipv4::Repr::parse(&ipv4::Packet::new_checked(&b[..]).unwrap()).unwrap(), r); } }
});
