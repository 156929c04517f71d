//! Arbitrary bytes as a control-API request line: a request or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<meshgate::api::Request>(data);
});
