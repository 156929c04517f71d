//! Arbitrary bytes into the vxlan parser: no panic, no out-of-bounds; what
//! parses re-emits to the same representation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshgate::wire::vxlan;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = vxlan::Packet::new_checked(data) { if let Ok(r) = vxlan::Repr::parse(&p) { let mut b = [0u8; 8]; r.emit(&mut vxlan::Packet::new_unchecked(&mut b[..])); assert_eq!(vxlan::Repr::parse(&vxlan::Packet::new_checked(&b[..]).unwrap()).unwrap(), r); } }
});
