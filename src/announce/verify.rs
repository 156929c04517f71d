//! Taking announcements in: the cheap checks first, then the tag, then
//! replay, then the parts of a set.
//!
//! The order is the defence against a flood: a datagram of the wrong
//! size or shape, or from an address that is no node's, costs a few
//! comparisons; a known node's address gets at most [`BUDGET_PER_SECOND`]
//! tag checks a second (whoever floods from a node's address, a container
//! masqueraded to it for example, cannot make this thread do more); only
//! a signed datagram touches the state of sets. State is kept for known
//! nodes only, one set in progress per node and kind, so memory is bounded
//! by the swarm's size.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Instant;

use super::Content;
use super::format::{self, Keys, Kind, Refusal};

/// Tag checks per second and node, at most; a real node sends a handful.
pub const BUDGET_PER_SECOND: f64 = 200.0;
/// A node may spend this many at once (a large set, a burst after a stop).
const BUDGET_BURST: f64 = 400.0;

/// A set some of whose parts arrived.
#[derive(Debug)]
struct Partial {
    epoch: u64,
    set: u32,
    bodies: Vec<Option<Vec<u8>>>,
}

/// Which sequence numbers were taken, as IPsec keeps them (RFC 4303,
/// 3.4.3): the highest, and a window of the [`WINDOW`] below it, so that
/// parts reordered on the way are taken while none is taken twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    epoch: u64,
    highest: u64,
    /// Bit i: `highest - i` was taken.
    window: u64,
}

const WINDOW: u64 = 64;

impl Seen {
    /// Takes (epoch, seq) unless it is a replay: an older epoch, a number
    /// taken already, or one too far below the highest to tell.
    fn take(seen: &mut Option<Seen>, epoch: u64, seq: u64) -> bool {
        let fresh = Seen {
            epoch,
            highest: seq,
            window: 1,
        };
        let Some(s) = seen else {
            *seen = Some(fresh);
            return true;
        };
        if epoch != s.epoch {
            if epoch < s.epoch {
                return false;
            }
            *s = fresh;
            return true;
        }
        if seq > s.highest {
            let shift = seq - s.highest;
            s.window = if shift >= WINDOW {
                0
            } else {
                s.window << shift
            } | 1;
            s.highest = seq;
            return true;
        }
        let back = s.highest - seq;
        if back >= WINDOW || s.window & (1 << back) != 0 {
            return false;
        }
        s.window |= 1 << back;
        true
    }
}

#[derive(Debug)]
struct Source {
    /// What was taken: anything else is a replay.
    seen: Option<Seen>,
    tokens: f64,
    refilled: Instant,
    partial: HashMap<Kind, Partial>,
    /// The newest whole set taken, by kind: an older one completed late
    /// (its parts reordered or delayed) must not undo it.
    taken: HashMap<Kind, (u64, u32)>,
    last_refusal: Option<Instant>,
}

/// Checks datagrams and assembles sets; counts what it refuses.
#[derive(Debug)]
pub struct Verifier {
    keys: Keys,
    sources: HashMap<Ipv4Addr, Source>,
    /// Refusals by reason.
    pub refused: BTreeMap<Refusal, u64>,
    /// Signed datagrams taken (refused ones are counted in `refused`
    /// only).
    pub datagrams: u64,
    /// Whole sets taken.
    pub sets: u64,
}

impl Verifier {
    pub fn new(keys: Keys) -> Verifier {
        Verifier {
            keys,
            sources: HashMap::new(),
            refused: BTreeMap::new(),
            datagrams: 0,
            sets: 0,
        }
    }

    /// Takes a datagram from `from`; `known` says whether an address is a
    /// node of this swarm or these tables. A whole set, when this
    /// datagram completed one.
    pub fn receive(
        &mut self,
        from: Ipv4Addr,
        bytes: &[u8],
        now: Instant,
        known: impl Fn(Ipv4Addr) -> bool,
    ) -> Result<Option<(Ipv4Addr, Content)>, Refusal> {
        let r = self.check(from, bytes, now, known);
        if let Err(why) = r {
            *self.refused.entry(why).or_default() += 1;
            if let Some(s) = self.sources.get_mut(&from) {
                s.last_refusal = Some(now);
            }
        }
        r
    }

    /// When a datagram from `node`'s address was last refused: someone may
    /// be flooding or forging in its name, and its real announcements may
    /// be lost among theirs.
    pub fn last_refusal(&self, node: Ipv4Addr) -> Option<Instant> {
        self.sources.get(&node).and_then(|s| s.last_refusal)
    }

    /// Every node's last refusal.
    pub fn last_refusals(&self) -> impl Iterator<Item = (Ipv4Addr, Instant)> + '_ {
        self.sources
            .iter()
            .filter_map(|(n, s)| Some((*n, s.last_refusal?)))
    }

    /// Forgets nodes that are no longer known.
    pub fn retain_known(&mut self, known: impl Fn(Ipv4Addr) -> bool) {
        self.sources.retain(|n, _| known(*n));
    }

    fn check(
        &mut self,
        from: Ipv4Addr,
        bytes: &[u8],
        now: Instant,
        known: impl Fn(Ipv4Addr) -> bool,
    ) -> Result<Option<(Ipv4Addr, Content)>, Refusal> {
        let shape = format::peek(bytes);
        if !known(from) {
            return Err(Refusal::Stranger);
        }
        let src = self.sources.entry(from).or_insert_with(|| Source {
            seen: None,
            tokens: BUDGET_BURST,
            refilled: now,
            partial: HashMap::new(),
            taken: HashMap::new(),
            last_refusal: None,
        });
        let h = shape?;
        let elapsed = now.saturating_duration_since(src.refilled).as_secs_f64();
        src.tokens = (src.tokens + elapsed * BUDGET_PER_SECOND).min(BUDGET_BURST);
        src.refilled = now;
        if src.tokens < 1.0 {
            return Err(Refusal::Budget);
        }
        src.tokens -= 1.0;
        let body = format::authenticate(&self.keys, bytes)?;
        if h.node != from {
            return Err(Refusal::Impersonation);
        }
        if !Seen::take(&mut src.seen, h.epoch, h.seq) {
            return Err(Refusal::Replay);
        }
        let this = (h.epoch, h.set);
        if src.taken.get(&h.kind).is_some_and(|t| this <= *t) {
            return Err(Refusal::Replay);
        }
        let p = src.partial.entry(h.kind).or_insert_with(|| Partial {
            epoch: h.epoch,
            set: h.set,
            bodies: Vec::new(),
        });
        if this < (p.epoch, p.set) {
            // Older than the set in progress: too late to matter.
            return Err(Refusal::Replay);
        }
        if this != (p.epoch, p.set) || p.bodies.len() != usize::from(h.parts) {
            // A newer set: the one in progress will never be whole.
            *p = Partial {
                epoch: h.epoch,
                set: h.set,
                bodies: vec![None; usize::from(h.parts)],
            };
        }
        p.bodies[usize::from(h.part)] = Some(body.to_vec());
        if p.bodies.iter().any(Option::is_none) {
            self.datagrams += 1;
            return Ok(None);
        }
        let bodies: Vec<Vec<u8>> = std::mem::take(&mut p.bodies)
            .into_iter()
            .map(|b| b.expect("whole"))
            .collect();
        let content = format::parse(h.kind, &bodies)?;
        src.taken.insert(h.kind, this);
        self.datagrams += 1;
        self.sets += 1;
        Ok(Some((from, content)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_takes_each_number_once_and_none_too_old() {
        let mut seen = None;
        assert!(Seen::take(&mut seen, 1, 10));
        assert!(Seen::take(&mut seen, 1, 8), "reordered");
        assert!(!Seen::take(&mut seen, 1, 8), "again");
        assert!(!Seen::take(&mut seen, 1, 10), "again");
        assert!(Seen::take(&mut seen, 1, 9));
        assert!(Seen::take(&mut seen, 1, 10 + WINDOW));
        assert!(!Seen::take(&mut seen, 1, 10), "out of the window");
        assert!(Seen::take(&mut seen, 1, 11), "inside it, unseen");
        assert!(!Seen::take(&mut seen, 0, 1000), "an older epoch");
        assert!(Seen::take(&mut seen, 2, 1), "a newer one starts over");
        assert!(!Seen::take(&mut seen, 1, 1000));
    }
}
