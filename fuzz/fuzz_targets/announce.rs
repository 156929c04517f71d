//! Arbitrary bytes as a sequence of announcement datagrams from a node's
//! address (each behind a 2-byte length), and as the records of a signed
//! set: refusals or sets, never a panic; a set only from signed datagrams,
//! and every datagram counted once, taken or refused.
#![no_main]
use std::net::Ipv4Addr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use meshgate::announce::format::{Kind, parse};
use meshgate::announce::{Keys, Verifier};

fuzz_target!(|data: &[u8]| {
    for kind in [Kind::ReturnPaths, Kind::Services] {
        let _ = parse(kind, &[data.to_vec()]);
    }
    let keys = Keys::parse(b"fuzzing key, sixteen bytes or more").expect("a key");
    let mut v = Verifier::new(keys);
    let node = Ipv4Addr::new(198, 18, 0, 11);
    let now = Instant::now();
    let mut rest = data;
    let mut sent = 0u64;
    while rest.len() >= 2 {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let (d, r) = rest[2..].split_at(n);
        rest = r;
        sent += 1;
        let _ = v.receive(node, d, now, |a| a == node);
    }
    let refused: u64 = v.refused.values().sum();
    assert_eq!(v.datagrams + refused, sent);
    assert!(v.sets <= v.datagrams);
});
