//! Arbitrary bytes from the Docker socket: the HTTP response parser, the
//! chunked decoder, the derivation of services from a manager's three JSON
//! answers (the input split at 0xff bytes), and a worker's: its ingress
//! network view with the protocols from a manager's services or from
//! iptables rules (the first two parts). Errors are fine; panics are not.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshgate::docker::engine::{dechunk, parse_response};
use meshgate::docker::ingress_view;
use meshgate::docker::swarm::derive;
use meshgate_testkit::docker as fixtures;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = parse_response(data) {
        assert!((100..600).contains(&r.status));
    }
    let _ = dechunk(data);
    let parts: Vec<&[u8]> = data.splitn(3, |&b| b == 0xff).collect();
    if let [view, protocols, ..] = parts[..] {
        if let Ok(view) = serde_json::from_slice(view) {
            let facts = meshgate::docker::swarm::SwarmFacts {
                manager: false,
                ..fixtures::facts()
            };
            let p = match serde_json::from_slice(protocols) {
                Ok(services) => ingress_view::protocols_from_services(&services, &mut Vec::new()),
                Err(_) => ingress_view::protocols_from_rules(&String::from_utf8_lossy(protocols)),
            };
            let d = ingress_view::derive(&view, &p, &facts, &fixtures::ingress());
            assert!(meshgate::config::check_unique(&d.services).is_ok());
        }
    }
    if let [s, t, n] = parts[..] {
        if let (Ok(s), Ok(t), Ok(n)) = (
            serde_json::from_slice(s),
            serde_json::from_slice(t),
            serde_json::from_slice(n),
        ) {
            if let Ok(d) = derive(
                &s,
                &t,
                &n,
                &fixtures::facts(),
                &fixtures::ingress(),
                &mut Default::default(),
            ) {
                // Whatever Docker says, what reaches the tables is valid.
                assert!(meshgate::config::check_unique(&d.services).is_ok());
            }
        }
    }
});
