//! Following Docker Swarm: two helper threads keep the control thread's
//! service list equal to the swarm's.
//!
//! * The reader re-reads services, running tasks and nodes every
//!   `swarm.resync` and, for a while after any event or any change it
//!   read, every 250 ms: a `docker service scale` is one service event,
//!   but its tasks reach `running` seconds later, and a rolling update
//!   stops and starts tasks for as long as it lasts, and Swarm sends no
//!   event for a task.
//! * The listener holds `GET /events` open (service, node and network
//!   events) so that changes are seen at once rather than at the next
//!   resync.
//!
//! Invariants: only a complete, successful read replaces the service list;
//! when Docker is unreachable or answers nonsense the last good list stays
//! in force (flows keep flowing) and the error is counted and printed with
//! a back-off. Neither thread touches the data plane: a new list goes to
//! the control thread, which validates it into a snapshot like any change.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender};
use serde::Serialize;

use crate::announce::ServiceWord;
use crate::config::{IngressConfig, Service, SwarmConfig};
use crate::docker::engine::{Docker, EventRead};
use crate::docker::swarm::{Desired, ServiceMemory, SwarmError, read_desired};
use crate::runtime::doorbell::Doorbell;

/// How long reads stay fast after an event.
const SETTLE: Duration = Duration::from_secs(15);
/// Read period while settling.
const SETTLE_EVERY: Duration = Duration::from_millis(250);
/// The same error is printed again at most this often.
const REPEAT_ERROR: Duration = Duration::from_secs(30);

/// What `meshgate stats` shows about the swarm source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct SwarmStatus {
    pub socket: String,
    /// Complete reads of services, tasks and nodes.
    pub reads: u64,
    pub read_errors: u64,
    /// Event-stream wake-ups (each triggers a read).
    pub events: u64,
    /// The last read error, until a read succeeds again.
    pub last_error: Option<String>,
    /// What the last read left out, and why.
    pub notes: Vec<String>,
    /// When the last read succeeded.
    #[serde(skip)]
    pub last_read: Option<Instant>,
    /// Its age when this status was taken.
    #[serde(default)]
    pub last_read_age_seconds: Option<f64>,
}

/// The running follower; dropping it stops both threads.
pub struct SwarmSource {
    updates: Receiver<Vec<Service>>,
    status: Arc<Mutex<SwarmStatus>>,
    /// What managers announced of services, for a worker's reads.
    word: Word,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// What managers announced of services, and how many times it changed
/// (a change wakes the reader as an event does, without counting as one).
type Word = Arc<Mutex<(u64, Option<Vec<ServiceWord>>)>>;

/// Reads the swarm once (at startup: an error here stops `meshgate run`);
/// also what the follower needs to remember of it ([`SwarmSource::start`]).
pub fn read_once(
    cfg: &SwarmConfig,
    ingress: &IngressConfig,
) -> Result<(Desired, ServiceMemory), SwarmError> {
    let manager = cfg.manager.as_deref().map(Docker::new);
    let mut memory = ServiceMemory::default();
    let d = read_desired(
        &Docker::new(&cfg.socket),
        &cfg.facts,
        ingress,
        manager.as_ref(),
        None,
        &mut memory,
    )?;
    print_notes(&d.notes);
    Ok((d, memory))
}

fn print_notes(notes: &[String]) {
    for n in notes {
        log::info!("swarm: {n}");
    }
}

impl SwarmSource {
    /// Starts following the swarm; `current` is what the tables hold now,
    /// from the read that left `memory`.
    pub fn start(
        cfg: &SwarmConfig,
        ingress: &IngressConfig,
        (current, memory): (Vec<Service>, ServiceMemory),
        notes: Vec<String>,
        bell: Arc<Doorbell>,
    ) -> std::io::Result<SwarmSource> {
        let (tx, updates) = crossbeam::channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(SwarmStatus {
            socket: cfg.socket.display().to_string(),
            reads: 1,
            notes,
            ..Default::default()
        }));
        let docker = Docker::new(&cfg.socket);
        let word: Word = Arc::default();
        let reader = Reader {
            word: word.clone(),
            docker: docker.clone(),
            cfg: cfg.clone(),
            ingress: ingress.clone(),
            last: current,
            memory,
            tx,
            bell,
            stop: stop.clone(),
            status: status.clone(),
        };
        let listener = {
            let stop = stop.clone();
            let status = status.clone();
            move || listen(docker, stop, status)
        };
        let threads = vec![
            std::thread::Builder::new()
                .name("mg-swarm-read".into())
                .spawn(move || reader.run())?,
            std::thread::Builder::new()
                .name("mg-swarm-events".into())
                .spawn(listener)?,
        ];
        Ok(SwarmSource {
            updates,
            status,
            word,
            stop,
            threads,
        })
    }

    /// The newest service list not yet taken, if any.
    pub fn latest(&self) -> Option<Vec<Service>> {
        self.updates.try_iter().last()
    }

    /// Hands over what managers now announce of services (`None`: no
    /// manager's word counts any more); a worker reads the swarm again at
    /// once with it.
    pub fn tell(&self, word: Option<Vec<ServiceWord>>) {
        let mut w = self.word.lock().unwrap_or_else(|e| e.into_inner());
        *w = (w.0 + 1, word);
    }

    pub fn status(&self) -> SwarmStatus {
        let mut s = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        s.last_read_age_seconds = s.last_read.map(|t| t.elapsed().as_secs_f64());
        s
    }
}

impl Drop for SwarmSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

struct Reader {
    docker: Docker,
    cfg: SwarmConfig,
    ingress: IngressConfig,
    last: Vec<Service>,
    /// The services earlier reads showed, for those removed since.
    memory: ServiceMemory,
    word: Word,
    tx: Sender<Vec<Service>>,
    bell: Arc<Doorbell>,
    stop: Arc<AtomicBool>,
    /// Shared with the event listener, which counts events in it.
    status: Arc<Mutex<SwarmStatus>>,
}

impl Reader {
    fn run(mut self) {
        let mut seen_events = self.events();
        let mut settle_until = Instant::now();
        let mut failures = 0u32;
        let mut last_print: Option<(String, Instant)> = None;
        let mut next = Instant::now() + self.cfg.resync;
        while !self.stop.load(Ordering::Relaxed) {
            let ev = self.events();
            if ev != seen_events {
                seen_events = ev;
                settle_until = Instant::now() + SETTLE;
                // Let a burst of events (a scale is several) land first.
                std::thread::sleep(Duration::from_millis(100));
                next = Instant::now();
            }
            if Instant::now() < next {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            let read = self.read(&mut last_print);
            if read == Some(true) {
                // The swarm is moving (a rolling update replaces its tasks
                // one after the other, and Swarm sends no event for a
                // task): keep reading fast until it rests.
                settle_until = settle_until.max(Instant::now() + SETTLE);
            }
            let ok = read.is_some();
            failures = if ok { 0 } else { failures.saturating_add(1) };
            let wait = if !ok {
                // 0.5 s, 1 s, 2 s ... up to the resync period.
                (Duration::from_millis(500) * 2u32.saturating_pow(failures.min(8) - 1))
                    .min(self.cfg.resync.max(Duration::from_millis(500)))
            } else if Instant::now() < settle_until {
                SETTLE_EVERY
            } else {
                self.cfg.resync
            };
            next = Instant::now() + wait;
        }
    }

    /// Events the listener has seen so far, and changes of the managers'
    /// word: either makes the reader read now.
    fn events(&self) -> u64 {
        let events = self.status.lock().unwrap_or_else(|e| e.into_inner()).events;
        events + self.word.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// One read: `None` when it failed, else whether the services changed.
    fn read(&mut self, last_print: &mut Option<(String, Instant)>) -> Option<bool> {
        let manager = self.cfg.manager.as_deref().map(Docker::new);
        match read_desired(
            &self.docker,
            &self.cfg.facts,
            &self.ingress,
            manager.as_ref(),
            self.word
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .1
                .as_deref(),
            &mut self.memory,
        ) {
            Ok(d) => {
                let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
                st.reads += 1;
                st.last_read = Some(Instant::now());
                if st.last_error.take().is_some() {
                    log::info!("swarm: Docker answers again");
                }
                if st.notes != d.notes {
                    print_notes(&d.notes);
                    st.notes = d.notes;
                }
                drop(st);
                *last_print = None;
                let changed = d.services != self.last;
                if changed {
                    self.last = d.services.clone();
                    if self.tx.send(d.services).is_ok() {
                        self.bell.ring();
                    }
                }
                Some(changed)
            }
            Err(e) => {
                let msg = e.to_string();
                let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
                st.read_errors += 1;
                st.last_error = Some(msg.clone());
                drop(st);
                let repeat = last_print
                    .as_ref()
                    .is_some_and(|(m, t)| *m == msg && t.elapsed() < REPEAT_ERROR);
                if !repeat {
                    log::warn!("swarm: {msg}; keeping the last known services");
                    *last_print = Some((msg, Instant::now()));
                }
                None
            }
        }
    }
}

/// Holds the event stream open, reopening it when it breaks.
fn listen(docker: Docker, stop: Arc<AtomicBool>, status: Arc<Mutex<SwarmStatus>>) {
    while !stop.load(Ordering::Relaxed) {
        // The timeout only bounds how long a stop waits.
        let stream = docker.events(&["service", "node", "network"], Duration::from_millis(500));
        if let Ok(mut s) = stream {
            while !stop.load(Ordering::Relaxed) {
                match s.wait() {
                    Ok(EventRead::Event) => {
                        status.lock().unwrap_or_else(|e| e.into_inner()).events += 1;
                    }
                    Ok(EventRead::Idle) => {}
                    // The reader reports Docker being away.
                    Err(_) => break,
                }
            }
        }
        for _ in 0..10 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
