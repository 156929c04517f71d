//! Arbitrary text as a configuration file: a configuration or a precise
//! error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // Docker is never asked: a fixed answer stands in for it.
        let facts = &mut |_: &std::path::Path| Err("no Docker while fuzzing".to_string());
        match meshgate::config::Config::parse_with(text, "fuzz.toml", facts) {
            Ok(_) => {}
            Err(e) => assert!(!e.message.is_empty() && !e.key.is_empty()),
        }
    }
});
