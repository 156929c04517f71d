//! Arbitrary bytes into the ethernet parser: no panic, no out-of-bounds; what
//! parses re-emits to the same representation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshgate::wire::ethernet;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = ethernet::Frame::new_checked(data) { let r = ethernet::Repr::parse(&f).unwrap(); let mut b = vec![0u8; r.buffer_len()]; r.emit(&mut ethernet::Frame::new_unchecked(&mut b[..])); assert_eq!(&b[..], &data[..14]); let _ = f.payload(); }
});
