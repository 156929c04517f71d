//! Arbitrary bytes into the ipv6 parser: no panic, no out-of-bounds; what
//! parses re-emits to the same representation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshgate::wire::ipv6;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = ipv6::Packet::new_checked(data) {
        let _ = p.payload();
        if let Ok(r) = ipv6::Repr::parse(&p) {
            let mut b = [0u8; ipv6::HEADER_LEN];
            r.emit(&mut ipv6::Packet::new_unchecked(&mut b[..]));
            assert_eq!(&b[..], &data[..ipv6::HEADER_LEN]);
        }
    }
});
