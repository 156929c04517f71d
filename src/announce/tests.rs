use super::format::{MAX_DATAGRAM, MAX_PARTS};
use super::*;

const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);
const TASK: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 4);
const SBOX: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 2);

fn keys(text: &str) -> Keys {
    Keys::parse(text.as_bytes()).unwrap()
}

fn key() -> Keys {
    keys("0123456789abcdef0123456789abcdef")
}

fn paths(tasks: &[Ipv4Addr]) -> Content {
    Content::ReturnPaths(rp(tasks))
}

fn word(name: &str, drained: &[Ipv4Addr]) -> ServiceWord {
    ServiceWord {
        name: name.into(),
        ports: vec![(8080, 80, Protocol::Tcp), (5353, 53, Protocol::Udp)],
        client_ip: ClientIp::Preserve,
        outlier_detection: OutlierDetection::Off,
        drained: drained.iter().copied().collect(),
    }
}

fn everyone(_: Ipv4Addr) -> bool {
    true
}

/// Feeds every datagram; the last result.
fn feed(
    v: &mut Verifier,
    from: Ipv4Addr,
    ds: &[Vec<u8>],
    now: Instant,
) -> Result<Option<(Ipv4Addr, Content)>, Refusal> {
    let mut last = Ok(None);
    for d in ds {
        last = v.receive(from, d, now, everyone);
    }
    last
}

#[test]
fn both_kinds_of_set_go_through_whole() {
    let mut s = Sender::with_epoch(NODE, 1);
    let mut v = Verifier::new(key());
    let now = Instant::now();
    let mut asking = rp(&[TASK, OTHER]);
    asking.asks.insert(OTHER);
    asking.own_sandbox = Some((
        SBOX,
        crate::wire::MacAddr([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]),
    ));
    for content in [
        paths(&[TASK]),
        paths(&[]),
        Content::ReturnPaths(asking),
        Content::Services(vec![word("web", &[TASK]), word("dns", &[])]),
        Content::Services(vec![]),
    ] {
        let ds = s.encode(&key(), &content);
        assert_eq!(ds.len(), 1);
        assert_eq!(feed(&mut v, NODE, &ds, now), Ok(Some((NODE, content))));
    }
    assert_eq!((v.datagrams, v.sets), (5, 5));
    assert!(v.refused.is_empty());
}

#[test]
fn a_large_set_is_split_under_the_size_limit_and_taken_only_whole() {
    // 2 000 tasks: far more than fits one datagram.
    let tasks: Vec<Ipv4Addr> = (0..2000u32)
        .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + i))
        .collect();
    let content = paths(&tasks);
    let mut s = Sender::with_epoch(NODE, 1);
    let ds = s.encode(&key(), &content);
    assert!(ds.len() > 5, "{} parts", ds.len());
    assert!(ds.iter().all(|d| d.len() <= MAX_DATAGRAM));
    let mut v = Verifier::new(key());
    let now = Instant::now();
    // Out of order: nothing until the last part, then the whole set.
    let (first, rest) = ds.split_first().unwrap();
    for d in rest {
        assert_eq!(v.receive(NODE, d, now, everyone), Ok(None));
    }
    let whole = v.receive(NODE, first, now, everyone);
    assert!(
        whole == Ok(Some((NODE, content.clone()))),
        "not the set sent"
    );

    // A set whose part is lost is never taken; the next whole one is.
    let ds = s.encode(&key(), &content);
    for d in &ds[1..] {
        assert_eq!(v.receive(NODE, d, now, everyone), Ok(None));
    }
    let ds = s.encode(&key(), &content);
    assert!(feed(&mut v, NODE, &ds, now) == Ok(Some((NODE, content))));

    // A service word with many drained tasks splits too.
    let big = Content::Services(vec![word("web", &tasks[..700]), word("dns", &tasks[700..])]);
    let ds = s.encode(&key(), &big);
    assert!(ds.len() > 1 && ds.len() <= usize::from(MAX_PARTS));
    assert!(ds.iter().all(|d| d.len() <= MAX_DATAGRAM));
    assert!(feed(&mut v, NODE, &ds, now) == Ok(Some((NODE, big))));
    assert!(v.refused.is_empty(), "{:?}", v.refused);
}

#[test]
fn forged_replayed_and_foreign_datagrams_are_refused_by_reason() {
    let now = Instant::now();
    let mut v = Verifier::new(key());
    let mut real = Sender::with_epoch(NODE, 100);
    let good = real.encode(&key(), &paths(&[TASK])).remove(0);
    // Issue 31's forgery: the old JSON format, from the node's address.
    let json = br#"{"version":1,"node":"198.18.0.11","tasks":[],"sandboxes":[]}"#;
    assert_eq!(v.receive(NODE, json, now, everyone), Err(Refusal::Format));
    // The new format with another key, whatever id it claims.
    let mut forger = Sender::with_epoch(NODE, 200);
    let wrong = keys("not the swarm's key, but long enough");
    let forged = forger.encode(&wrong, &paths(&[])).remove(0);
    assert_eq!(
        v.receive(NODE, &forged, now, everyone),
        Err(Refusal::UnknownKey)
    );
    let mut claims_ours = forged.clone();
    claims_ours[4..8].copy_from_slice(&good[4..8]);
    assert_eq!(
        v.receive(NODE, &claims_ours, now, everyone),
        Err(Refusal::Forged)
    );
    // One bit of a signed datagram changed.
    let mut flipped = good.clone();
    flipped[45] ^= 1;
    assert_eq!(
        v.receive(NODE, &flipped, now, everyone),
        Err(Refusal::Forged)
    );
    // Not from a node at all.
    let stranger = Ipv4Addr::new(198, 18, 9, 9);
    assert_eq!(
        v.receive(stranger, &good, now, |n| n == NODE),
        Err(Refusal::Stranger)
    );
    // From another node's address, speaking for this one.
    assert_eq!(
        v.receive(OTHER, &good, now, everyone),
        Err(Refusal::Impersonation)
    );
    // The real one goes through once; again, it is a replay; so is an
    // older one sent after it.
    let older = good.clone();
    let newer = real.encode(&key(), &paths(&[])).remove(0);
    assert!(matches!(
        v.receive(NODE, &newer, now, everyone),
        Ok(Some(_))
    ));
    assert_eq!(v.receive(NODE, &newer, now, everyone), Err(Refusal::Replay));
    assert_eq!(v.receive(NODE, &older, now, everyone), Err(Refusal::Replay));
    // A successor's epoch is later: it goes through.
    let mut successor = Sender::with_epoch(NODE, 101);
    let next = successor.encode(&key(), &paths(&[TASK])).remove(0);
    assert!(matches!(v.receive(NODE, &next, now, everyone), Ok(Some(_))));

    let counts: Vec<(&str, u64)> = v.refused.iter().map(|(r, n)| (r.name(), *n)).collect();
    assert_eq!(
        counts,
        [
            ("format", 1),
            ("stranger", 1),
            ("unknown_key", 1),
            ("forged", 2),
            ("impersonation", 1),
            ("replay", 2)
        ]
    );
    assert!(v.last_refusal(NODE).is_some());
    assert!(v.last_refusal(stranger).is_none(), "no state for strangers");
}

#[test]
fn reordered_parts_are_taken_once_and_late_sets_never() {
    let now = Instant::now();
    let mut v = Verifier::new(key());
    let mut s = Sender::with_epoch(NODE, 7);
    let many: Vec<Ipv4Addr> = (0..600u32)
        .map(|i| Ipv4Addr::from(0xc613_0000 + i))
        .collect();
    let ds = s.encode(&key(), &paths(&many));
    assert_eq!(ds.len(), 3);
    assert_eq!(v.receive(NODE, &ds[2], now, everyone), Ok(None));
    assert_eq!(v.receive(NODE, &ds[1], now, everyone), Ok(None));
    assert!(matches!(
        v.receive(NODE, &ds[0], now, everyone),
        Ok(Some(_))
    ));
    for d in &ds {
        assert_eq!(v.receive(NODE, d, now, everyone), Err(Refusal::Replay));
    }
    // A set that completes after a newer one was taken changes nothing.
    let late = s.encode(&key(), &paths(&[TASK]));
    let newer = s.encode(&key(), &paths(&[]));
    assert!(matches!(feed(&mut v, NODE, &newer, now), Ok(Some(_))));
    assert_eq!(feed(&mut v, NODE, &late, now), Err(Refusal::Replay));
}

#[test]
fn a_flood_from_a_nodes_address_gets_a_bounded_number_of_checks() {
    let t0 = Instant::now();
    let mut v = Verifier::new(key());
    let mut forger = Sender::with_epoch(NODE, 1);
    let wrong = keys("not the swarm's key, but long enough");
    let mut id_ours = forger.encode(&wrong, &paths(&[])).remove(0);
    id_ours[4..8]
        .copy_from_slice(&Sender::with_epoch(NODE, 1).encode(&key(), &paths(&[]))[0][4..8]);
    for _ in 0..10_000 {
        let _ = v.receive(NODE, &id_ours, t0, everyone);
    }
    let checked = v.refused[&Refusal::Forged];
    assert!(checked <= 400, "{checked} tag checks in one instant");
    assert_eq!(checked + v.refused[&Refusal::Budget], 10_000);
    // A second later the node has its budget back: its real set goes in.
    let t1 = t0 + Duration::from_secs(1);
    let mut real = Sender::with_epoch(NODE, 5);
    let d = real.encode(&key(), &paths(&[TASK]));
    assert!(matches!(feed(&mut v, NODE, &d, t1), Ok(Some(_))));
}

#[test]
fn a_key_is_rotated_with_two_keys_accepted() {
    let (old, new) = (
        "old key, sixteen bytes or more",
        "new key, sixteen bytes or more",
    );
    let both = keys(&format!("{new}\n{old}\n"));
    let mut s = Sender::with_epoch(NODE, 1);
    let now = Instant::now();
    // A node still on the old key, one already on both (signing with the
    // new one): each is understood by the other.
    let mut only_old = Verifier::new(keys(old));
    let mut v_both = Verifier::new(both.clone());
    assert!(matches!(
        feed(&mut v_both, NODE, &s.encode(&keys(old), &paths(&[])), now),
        Ok(Some(_))
    ));
    let signed_new = s.encode(&both, &paths(&[]));
    assert_eq!(
        feed(&mut only_old, NODE, &signed_new, now),
        Err(Refusal::UnknownKey)
    );
    let mut v_new = Verifier::new(keys(new));
    assert!(matches!(
        feed(&mut v_new, NODE, &signed_new, now),
        Ok(Some(_))
    ));
}

#[test]
fn keys_are_long_enough_few_and_private() {
    assert!(Keys::parse(b"short").unwrap_err().contains("at least 16"));
    assert!(Keys::parse(b"\n \n").unwrap_err().contains("no key"));
    let three = "a".repeat(20) + "\n" + &"b".repeat(20) + "\n" + &"c".repeat(20);
    assert!(
        Keys::parse(three.as_bytes())
            .unwrap_err()
            .contains("3 keys")
    );
    assert!(
        !format!("{:?}", key()).contains("0123"),
        "Debug shows no key"
    );

    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("mg-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("key");
    std::fs::write(&f, "0123456789abcdef0123\n").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Keys::load(&f).unwrap_err();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o400)).unwrap();
    let ok = Keys::load(&f);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(e.contains("readable by others (mode 644)"), "{e}");
    assert!(ok.is_ok(), "{ok:?}");
}

fn rp(tasks: &[Ipv4Addr]) -> ReturnPaths {
    ReturnPaths {
        tasks: tasks.iter().copied().collect(),
        sandboxes: [SBOX].into_iter().collect(),
        asks: Default::default(),
        own_sandbox: None,
    }
}

#[test]
fn a_task_is_ready_while_its_own_node_says_so() {
    let mut p = Peers::default();
    let t0 = Instant::now();
    let calm = |_| None;
    assert!(!p.ready(NODE, TASK, SBOX));
    assert!(p.take(NODE, rp(&[TASK]), t0, everyone));
    assert!(p.ready(NODE, TASK, SBOX));
    assert!(
        !p.ready(NODE, TASK, Ipv4Addr::new(198, 18, 128, 3)),
        "another sandbox"
    );
    assert!(!p.ready(OTHER, TASK, SBOX), "another node");
    let t1 = t0 + INTERVAL;
    assert!(!p.take(NODE, rp(&[TASK]), t1, everyone), "the same again");
    assert!(!p.expire(t1 + Duration::from_secs(1), calm));
    assert!(p.expire(t1 + STALE_AFTER, calm));
    assert!(!p.ready(NODE, TASK, SBOX));
    // An empty set (a node that stops) ends it at once.
    p.take(NODE, rp(&[TASK]), t1, everyone);
    assert!(p.take(NODE, rp(&[]), t1, everyone));
    assert!(!p.ready(NODE, TASK, SBOX));
    // A task whose container asks for the client's address itself.
    let mut asking = rp(&[TASK]);
    asking.asks.insert(TASK);
    assert!(!p.asks(NODE, TASK));
    assert!(p.take(NODE, asking, t1, everyone), "asking is a change");
    assert!(p.asks(NODE, TASK) && !p.asks(OTHER, TASK));
    // Not a task's node: not kept, but the MAC of its own sandbox is
    // (task nodes need an ingress node's), until it is stale.
    let mac = crate::wire::MacAddr([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]);
    let other_sbox = Ipv4Addr::new(198, 18, 128, 3);
    let mut ingress_only = rp(&[TASK]);
    ingress_only.own_sandbox = Some((other_sbox, mac));
    assert!(!p.take(OTHER, ingress_only, t1, |n| n != OTHER));
    assert_eq!(p.sandbox_macs().get(&other_sbox), Some(&mac));
    p.expire(t1 + STALE_AFTER, |_| None);
    assert!(p.sandbox_macs().is_empty());
    assert_eq!((p.accepted, p.ignored), (5, 1));
}

#[test]
fn under_a_flood_the_last_good_set_lasts_its_grace_and_no_longer() {
    let mut p = Peers::default();
    let mut m = ManagerWords::default();
    let t0 = Instant::now();
    p.take(NODE, rp(&[TASK]), t0, everyone);
    m.take(NODE, vec![word("web", &[])], t0);
    // Refusals in the node's name up to the moment of each check.
    let mut at = t0 + STALE_AFTER;
    while at < t0 + GRACE {
        let firing = |_| Some(at);
        assert!(!p.expire(at, firing), "{:?} after", at - t0);
        assert!(!m.expire(at, firing));
        at += INTERVAL;
    }
    assert!(p.ready(NODE, TASK, SBOX));
    assert!(m.current().is_some());
    let firing = |_| Some(t0 + GRACE);
    assert!(p.expire(t0 + GRACE, firing));
    assert!(m.expire(t0 + GRACE, firing));
    // Without refusals, STALE_AFTER as before.
    p.take(NODE, rp(&[TASK]), t0, everyone);
    assert!(p.expire(t0 + STALE_AFTER, |_| Some(t0)));
}

#[test]
fn the_newest_managers_word_is_in_force() {
    let mut m = ManagerWords::default();
    let t0 = Instant::now();
    assert!(m.current().is_none());
    assert!(m.take(NODE, vec![word("web", &[])], t0));
    assert!(
        !m.take(OTHER, vec![word("web", &[])], t0 + INTERVAL / 2),
        "they agree"
    );
    assert!(m.take(OTHER, vec![word("web", &[TASK])], t0 + INTERVAL));
    assert_eq!(m.current().unwrap()[0].drained.len(), 1);
    assert!(m.expire(t0 + INTERVAL + STALE_AFTER, |_| None));
    assert!(m.current().is_none());
}
