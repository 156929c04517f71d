//! Arbitrary text as a configuration file: a configuration or a precise
//! error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match meshgate::control::config::Config::parse(text, "fuzz.toml") {
            Ok(_) => {}
            Err(e) => assert!(!e.message.is_empty() && !e.key.is_empty()),
        }
    }
});
