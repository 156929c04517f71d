//! Arbitrary bytes as a flow state left by a previous meshgate: a state or
//! a reason, never a panic; what decodes encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshgate::dataplane::handover::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok((origin, records)) = decode(data) {
        assert_eq!(encode(origin, &records), data);
    }
});
