//! The poll-mode worker: one per queue, pinned to a core, owning its socket,
//! its pipeline (flow table, counters) and its share of the UMEM frames.
//!
//! One iteration: apply control commands (between batches only) -> recycle
//! TX completions -> refill the fill ring -> receive a batch -> run the
//! pipeline on each frame -> take frames handed off by other workers ->
//! transmit the batch with one kick -> expire a few idle flows.
//!
//! Frames handed to another worker travel as [`FrameToken`]s through
//! lock-free queues (zero copy: all sockets share one UMEM). A frame always
//! returns to the worker whose share it belongs to ("origin") once it is
//! free again, so no worker's pool drains into another's.
//!
//! Tasks on this node: one worker (the sandbox worker) also serves the
//! ingress sandbox's socket, which has a UMEM of its own (the sandbox's veth
//! binds in copy mode while the NIC's sockets may be zero-copy). Frames
//! cross between the two UMEMs by copy, in the sandbox worker only: a
//! task's reply is copied into one of its NIC frames and then handled like
//! any frame (handed to the worker owning the flow, if another); a frame
//! for a local task reaches it through `Exchange::to_sandbox` and is copied
//! into a sandbox frame for transmission. Sandbox frames never leave the
//! sandbox worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The start of the workers' millisecond clock ([`Pipeline::set_now`]),
/// one for the process: what a worker writes by it into state the workers
/// share (a task's ejection, `crate::dataplane::health`) means the same
/// to the others and to the control thread ([`clock_ms`]).
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The workers' clock now, in milliseconds (wrapping).
pub fn clock_ms() -> u32 {
    epoch().elapsed().as_millis() as u32
}

use crossbeam::channel::{Receiver, Sender};
use crossbeam::queue::ArrayQueue;
use hdrhistogram::Histogram;

use crate::config::PollMode;
use crate::dataplane::pipeline::Report;
use crate::dataplane::tables::{Snapshot, TaskId};
use crate::dataplane::{DropReason, FrameBuf, Pipeline, Verdict};
use crate::xdp::{FrameToken, Port, Umem, XskStats};

/// The ingress sandbox's socket and its frames, owned by the sandbox worker.
pub struct SandboxPort {
    pub port: Port,
    pub umem: Arc<Umem>,
    pub free: Vec<FrameToken>,
    /// Frames to transmit at the end of the iteration, and scratch space
    /// for receiving, so that no iteration allocates.
    pending: Vec<FrameToken>,
    scratch: Vec<FrameToken>,
}

impl SandboxPort {
    pub fn new(port: Port, umem: Arc<Umem>, free: Vec<FrameToken>, batch: usize) -> SandboxPort {
        SandboxPort {
            port,
            umem,
            free,
            pending: Vec::with_capacity(batch * 4),
            scratch: Vec::with_capacity(batch * 4),
        }
    }
}

/// Commands from the control thread, applied between batches.
pub enum Command {
    /// Switch to this snapshot.
    Snapshot(Arc<Snapshot>),
    /// End every flow of these (removed) tasks now.
    /// End the flows of these tasks (only those that keep the client's
    /// address, when `preserving_only`: their task lost its return path)
    /// and reset their TCP clients.
    EndFlows {
        tasks: Vec<TaskId>,
        preserving_only: bool,
    },
    /// Stop for good and hand the flows over (a takeover): the worker
    /// stops receiving, exports its flows, closes its sockets (a queue
    /// takes one socket at a time) and only then sends the export, so that
    /// the successor's bind finds the queue free.
    HandOver(Sender<FlowExport>),
}

/// A worker's flows, as it handed them over.
pub type FlowExport = (
    crate::dataplane::handover::Origin,
    Vec<crate::dataplane::handover::FlowRecord>,
);

/// What a worker ships to the control thread periodically.
pub struct WorkerReport {
    pub pipeline: Report,
    /// Batch processing time in nanoseconds, since the last report.
    pub batch_ns: Histogram<u64>,
    pub xsk: XskStats,
    pub bad_descs: u64,
    pub free_frames: usize,
}

/// State a worker shares with the control thread and its peers.
pub struct WorkerShared {
    /// Generation of the snapshot the worker uses.
    pub generation: AtomicU64,
    sleeping: AtomicBool,
    wake: nix::sys::eventfd::EventFd,
}

impl WorkerShared {
    pub fn new() -> std::io::Result<Arc<WorkerShared>> {
        let wake =
            nix::sys::eventfd::EventFd::from_flags(nix::sys::eventfd::EfdFlags::EFD_NONBLOCK)?;
        Ok(Arc::new(WorkerShared {
            generation: AtomicU64::new(0),
            sleeping: AtomicBool::new(false),
            wake,
        }))
    }

    /// Wakes the worker if it sleeps in `poll()`.
    pub fn wake(&self) {
        // SeqCst pairs with the worker's store of `sleeping` before its
        // final check of its queues: either it sees our work, or we see it
        // asleep and write the eventfd.
        if self.sleeping.load(Ordering::SeqCst) {
            let _ = self.wake.write(1);
        }
    }
}

/// The queues between workers: hand-offs (frames to process) and returns
/// (free frames going home), one of each per worker.
pub struct Exchange {
    pub handoff: Vec<Arc<ArrayQueue<FrameToken>>>,
    pub returns: Vec<Arc<ArrayQueue<FrameToken>>>,
    pub shared: Vec<Arc<WorkerShared>>,
    /// Replies of local tasks (already in the NIC's UMEM) for the worker
    /// that owns their flow, one queue per worker.
    pub local: Vec<Arc<ArrayQueue<FrameToken>>>,
    /// Translated frames for local tasks, for the sandbox worker to send.
    pub to_sandbox: Arc<ArrayQueue<FrameToken>>,
    /// The worker that serves the sandbox's socket, if there is one.
    pub sandbox_worker: Option<usize>,
}

pub struct Worker {
    pub id: u16,
    pub port: Port,
    pub umem: Arc<Umem>,
    pub pipeline: Pipeline,
    pub free: Vec<FrameToken>,
    pub frames_per_queue: u32,
    pub exchange: Arc<Exchange>,
    pub commands: Receiver<Command>,
    pub reports: Sender<WorkerReport>,
    /// Old snapshots go back to the control thread to be freed there.
    pub garbage: Sender<Arc<Snapshot>>,
    pub stop: Arc<AtomicBool>,
    pub batch: usize,
    pub poll: PollMode,
    pub report_every: Duration,
    /// The ingress sandbox's socket, on the sandbox worker only.
    pub sandbox: Option<SandboxPort>,
    /// Set by [`Command::HandOver`]: where the flows go once the loop ends.
    pub hand_over: Option<Sender<FlowExport>>,
}

/// Idle iterations before an adaptive worker sleeps (about 50 µs of spinning).
const SPIN_BEFORE_SLEEP: u32 = 2000;
/// Longest sleep, so that idle flows still expire and reports still flow.
const SLEEP_MS: u16 = 100;
/// When busy, the sweep runs once per millisecond over 1/1000 of the used
/// slots (at least 64), so a whole pass takes about a second whatever the
/// packet rate.
const EXPIRE_MIN: usize = 64;
/// Flows a busy worker's sweep removes each millisecond at most: a
/// removal (two index entries, a SNAT port, shared counters) costs far
/// more than a look, and a million flows expiring at once stalled a
/// worker for milliseconds per sweep without a bound (bench/README.md,
/// "Expiry").
pub const EXPIRE_REMOVED_BUSY: usize = 128;
/// Flow-table slots an idle worker's sweep examines per wake-up, and the
/// flows it removes at most (a packet arriving meanwhile waits for it).
pub const EXPIRE_BUDGET_IDLE: usize = 1 << 16;
pub const EXPIRE_REMOVED_IDLE: usize = 1024;

/// What a busy worker's sweep examines and removes at most each
/// millisecond, for a table whose used slots reach `high_water` (the
/// benchmark's expiry measurement uses the same rule).
pub fn busy_sweep_budget(high_water: usize) -> (usize, usize) {
    ((high_water / 1000).max(EXPIRE_MIN), EXPIRE_REMOVED_BUSY)
}

impl Worker {
    fn origin(&self, t: &FrameToken) -> usize {
        (self.umem.frame_index(t) / self.frames_per_queue) as usize
    }

    /// Gives a frame that is free again back to its origin worker.
    fn recycle(&mut self, mut t: FrameToken) {
        self.umem.reset(&mut t);
        let o = self.origin(&t);
        if o == self.id as usize {
            self.free.push(t);
        } else if let Err(t) = self.exchange.returns[o].push(t) {
            // Its home queue is full: keep it; the pools even out later.
            self.free.push(t);
        } else {
            self.exchange.shared[o].wake();
        }
    }

    /// Puts frames from the front of `tx` on the TX ring and counts them
    /// as transmitted; returns how many.
    #[inline]
    fn transmit(&mut self, tx: &mut Vec<FrameToken>) -> usize {
        let sent = self.port.transmit(tx);
        self.pipeline.events_mut().tx += sent as u64;
        sent
    }

    /// Frames that found no room on the TX ring: counted, back to the pool.
    fn drop_unsent(&mut self, tx: &mut Vec<FrameToken>) {
        for t in tx.drain(..) {
            self.pipeline.count_drop(DropReason::TxFull);
            self.recycle(t);
        }
    }

    /// Runs the pipeline on `t` (a frame from the NIC, or a local task's
    /// reply when `local`) and routes it by verdict.
    #[inline]
    fn handle(&mut self, mut t: FrameToken, tx: &mut Vec<FrameToken>, local: bool) {
        let (off, len, verdict) = {
            let len = t.len() as usize;
            let (chunk, off) = self.umem.frame(&mut t);
            let mut f = FrameBuf::new(chunk, off, len);
            let v = if local {
                self.pipeline.process_local(&mut f)
            } else {
                self.pipeline.process(&mut f)
            };
            (f.off, f.len, v)
        };
        match verdict {
            Verdict::Transmit => {
                self.umem.set_data(&mut t, off, len);
                tx.push(t);
            }
            Verdict::Local => {
                self.umem.set_data(&mut t, off, len);
                self.send_to_sandbox(t);
            }
            Verdict::Split(len2) | Verdict::SplitLocal(len2) => {
                let to_local = matches!(verdict, Verdict::SplitLocal(_));
                // The second fragment, right behind the first in its
                // buffer, copied out before the first leaves.
                let second = self.free.pop().and_then(|mut s| {
                    self.umem.set_data(&mut t, off + len, len2.into());
                    if copy_frame(&self.umem, &mut t, &self.umem, &mut s) {
                        Some(s)
                    } else {
                        self.umem.reset(&mut s);
                        self.free.push(s);
                        None
                    }
                });
                self.umem.set_data(&mut t, off, len);
                let frames = std::iter::once(Some(t)).chain(std::iter::once(second));
                for frame in frames {
                    match frame {
                        Some(f) if to_local => self.send_to_sandbox(f),
                        Some(f) => tx.push(f),
                        None => self.pipeline.count_drop(DropReason::NoFrame),
                    }
                }
            }
            Verdict::Drop(_) => self.recycle(t),
            Verdict::Handoff(w) => {
                let w = w as usize;
                let queues = if local {
                    &self.exchange.local
                } else {
                    &self.exchange.handoff
                };
                if w == self.id as usize || w >= queues.len() {
                    self.pipeline.count_drop(DropReason::HandoffFull);
                    self.recycle(t);
                } else {
                    match queues[w].push(t) {
                        Ok(()) => self.exchange.shared[w].wake(),
                        Err(t) => {
                            self.pipeline.count_drop(DropReason::HandoffFull);
                            self.recycle(t);
                        }
                    }
                }
            }
        }
    }

    /// Sends a translated frame towards a local task: copied into a
    /// sandbox frame here on the sandbox worker, else queued for it.
    fn send_to_sandbox(&mut self, t: FrameToken) {
        if self.sandbox.is_some() {
            self.copy_to_sandbox(t);
            return;
        }
        let Some(w) = self.exchange.sandbox_worker else {
            // Snapshots hold local tasks only when there is a sandbox.
            self.pipeline.count_drop(DropReason::SandboxFull);
            self.recycle(t);
            return;
        };
        match self.exchange.to_sandbox.push(t) {
            Ok(()) => self.exchange.shared[w].wake(),
            Err(t) => {
                self.pipeline.count_drop(DropReason::SandboxFull);
                self.recycle(t);
            }
        }
    }

    /// On the sandbox worker: copies a NIC frame into a free sandbox frame,
    /// to be transmitted at the end of the iteration.
    fn copy_to_sandbox(&mut self, mut t: FrameToken) {
        let Some(sb) = self.sandbox.as_mut() else {
            return self.recycle(t);
        };
        let copied = match sb.free.pop() {
            Some(mut s) => {
                if copy_frame(&self.umem, &mut t, &sb.umem, &mut s) {
                    sb.pending.push(s);
                    true
                } else {
                    sb.umem.reset(&mut s);
                    sb.free.push(s);
                    false
                }
            }
            None => false,
        };
        if !copied {
            self.pipeline.count_drop(DropReason::SandboxFull);
        }
        self.recycle(t);
    }

    /// On the sandbox worker: frames the sandbox's kernel has sent go back
    /// to its pool, the fill ring is refilled, local tasks' replies are
    /// received, copied into NIC frames and handled, and frames for local
    /// tasks are sent. Returns how many frames it moved.
    fn serve_sandbox(&mut self, tx: &mut Vec<FrameToken>, batch: u32) -> usize {
        let Some(mut sb) = self.sandbox.take() else {
            return 0;
        };
        let mut work = 0;
        sb.port.complete(&mut sb.scratch, batch * 4);
        for mut t in sb.scratch.drain(..) {
            sb.umem.reset(&mut t);
            sb.free.push(t);
        }
        sb.port.fill(&mut sb.free);
        let n = sb.port.recv(&mut sb.scratch, batch);
        self.pipeline.events_mut().sandbox_rx += n as u64;
        // `handle` runs while the sandbox is out of `self`: a reply never
        // goes back to the sandbox, and were it to, `send_to_sandbox` would
        // queue it on `Exchange::to_sandbox`, drained below.
        for mut s in sb.scratch.drain(..) {
            let copy = match self.free.pop() {
                Some(mut t) => {
                    if copy_frame(&sb.umem, &mut s, &self.umem, &mut t) {
                        Some(t)
                    } else {
                        self.free.push(t);
                        None
                    }
                }
                None => None,
            };
            sb.umem.reset(&mut s);
            sb.free.push(s);
            match copy {
                Some(t) => {
                    work += 1;
                    self.handle(t, tx, true);
                }
                None => self.pipeline.count_drop(DropReason::SandboxFull),
            }
        }
        self.sandbox = Some(sb);
        for _ in 0..batch {
            match self.exchange.to_sandbox.pop() {
                Some(t) => {
                    work += 1;
                    self.copy_to_sandbox(t);
                }
                None => break,
            }
        }
        let Some(sb) = self.sandbox.as_mut() else {
            return work;
        };
        if !sb.pending.is_empty() {
            let sent = sb.port.transmit(&mut sb.pending);
            self.pipeline.events_mut().sandbox_tx += sent as u64;
            for mut s in sb.pending.drain(..) {
                self.pipeline.count_drop(DropReason::SandboxFull);
                sb.umem.reset(&mut s);
                sb.free.push(s);
            }
        }
        sb.port.kick();
        work
    }

    fn apply_commands(&mut self) {
        while let Ok(c) = self.commands.try_recv() {
            match c {
                Command::Snapshot(s) => {
                    let g = s.generation;
                    let old = self.pipeline.set_snapshot(s);
                    let _ = self.garbage.send(old);
                    self.exchange.shared[self.id as usize]
                        .generation
                        .store(g, Ordering::Release);
                }
                Command::HandOver(to) => self.hand_over = Some(to),
                Command::EndFlows {
                    tasks,
                    preserving_only,
                } => {
                    // The tasks are gone (or their answers to the client's
                    // own address no longer come back here): end their
                    // flows now and tell TCP clients with a reset, rather
                    // than let them wait for answers that will never come.
                    let ended = self.pipeline.end_flows_where(|f| {
                        tasks.contains(&f.task_id) && (f.preserve || !preserving_only)
                    });
                    let mut tx = Vec::new();
                    for flow in &ended {
                        let Some(mut t) = self.free.pop() else { break };
                        let ok = {
                            let (chunk, off) = self.umem.frame(&mut t);
                            let mut fb = FrameBuf::new(chunk, off, 0);
                            let ok = self.pipeline.reset_for_flow(flow, &mut fb);
                            (ok, fb.off, fb.len)
                        };
                        if ok.0 {
                            self.umem.set_data(&mut t, ok.1, ok.2);
                            tx.push(t);
                        } else {
                            self.free.push(t);
                        }
                    }
                    // More resets than the ring holds: wait for room, as
                    // long as the kernel makes progress.
                    while !tx.is_empty() {
                        if self.transmit(&mut tx) == 0 {
                            self.drop_unsent(&mut tx);
                        }
                        self.port.kick();
                    }
                }
            }
        }
    }

    fn report(&mut self, hist: &mut Histogram<u64>) {
        let r = WorkerReport {
            pipeline: self.pipeline.take_report(),
            batch_ns: hist.clone(),
            xsk: self.port.stats(),
            bad_descs: self.port.bad_descs,
            free_frames: self.free.len(),
        };
        hist.reset();
        let _ = self.reports.send(r);
    }

    /// The poll loop; returns when `stop` is set. One iteration: commands
    /// from the control thread, frames back from the kernel and from
    /// other workers, frames in from the NIC, the hand-off queues and the
    /// sandbox, frames out, expiry, a report when due, and a sleep when
    /// there was nothing to do.
    pub fn run(mut self) {
        let me = self.id as usize;
        let start = epoch();
        let mut rx: Vec<FrameToken> = Vec::with_capacity(self.batch);
        let mut tx: Vec<FrameToken> = Vec::with_capacity(self.batch * 2);
        let mut done: Vec<FrameToken> = Vec::with_capacity(self.batch * 4);
        let mut hist =
            Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 2).expect("valid bounds");
        let mut last_report = Instant::now();
        let mut idle: u32 = 0;
        let mut last_sweep: u32 = 0;
        let inbox = self.exchange.handoff[me].clone();
        let local_inbox = self.exchange.local[me].clone();
        let returns = self.exchange.returns[me].clone();
        let shared = self.exchange.shared[me].clone();
        let batch = self.batch as u32;
        while !self.stop.load(Ordering::Relaxed) {
            self.apply_commands();
            if self.hand_over.is_some() {
                break;
            }
            let now = Instant::now();
            self.pipeline
                .set_now(now.duration_since(start).as_millis() as u32);
            self.take_back_frames(&mut done, &returns, batch);

            let n = self.port.recv(&mut rx, batch);
            self.pipeline.events_mut().rx += n as u64;
            let mut work = n;
            for t in rx.drain(..) {
                self.handle(t, &mut tx, false);
            }
            work += self.drain_queue(&inbox, &mut tx, false, batch);
            work += self.drain_queue(&local_inbox, &mut tx, true, batch);
            work += self.serve_sandbox(&mut tx, batch);
            if !tx.is_empty() {
                self.transmit(&mut tx);
                // The TX ring is full: the kernel is not keeping up.
                self.drop_unsent(&mut tx);
            }
            self.port.kick();
            if work > 0 {
                hist.saturating_record(now.elapsed().as_nanos() as u64);
                idle = 0;
                self.sweep_each_millisecond(&mut last_sweep);
            } else {
                idle = idle.saturating_add(1);
            }

            if last_report.elapsed() >= self.report_every {
                self.report(&mut hist);
                last_report = Instant::now();
            }
            if work == 0 && idle >= self.spin_limit() && self.nothing_in_flight() {
                let queues = [&*inbox, &*local_inbox, &*returns];
                if self.sleep(&shared, queues) {
                    // Idle for a while: a long sweep, so that idle flows
                    // still expire on a quiet worker.
                    self.pipeline.set_now(start.elapsed().as_millis() as u32);
                    self.pipeline
                        .expire((EXPIRE_BUDGET_IDLE, EXPIRE_REMOVED_IDLE));
                }
                idle = 0;
            }
        }
        self.report(&mut hist);
        if let Some(to) = self.hand_over.take() {
            let export = self.pipeline.export_flows();
            // Closes this worker's sockets (and the sandbox's) before the
            // successor hears that it may bind.
            drop(self);
            let _ = to.send(export);
        }
    }

    /// Frames the kernel has sent go back to their pools, frames other
    /// workers return come home, and the fill ring is refilled.
    fn take_back_frames(
        &mut self,
        done: &mut Vec<FrameToken>,
        returns: &ArrayQueue<FrameToken>,
        batch: u32,
    ) {
        self.port.complete(done, batch * 4);
        for t in done.drain(..) {
            self.recycle(t);
        }
        for _ in 0..batch * 4 {
            match returns.pop() {
                Some(t) => self.free.push(t),
                None => break,
            }
        }
        self.port.fill(&mut self.free);
    }

    /// Handles up to `batch` frames from a queue of frames handed to this
    /// worker (`local`: local tasks' replies); returns how many.
    fn drain_queue(
        &mut self,
        q: &ArrayQueue<FrameToken>,
        tx: &mut Vec<FrameToken>,
        local: bool,
        batch: u32,
    ) -> usize {
        let mut n = 0;
        while n < batch as usize {
            let Some(t) = q.pop() else { break };
            self.handle(t, tx, local);
            n += 1;
        }
        n
    }

    /// While busy, the flow table's expiry runs once a millisecond over
    /// 1/1000 of the used slots (at least `EXPIRE_MIN`).
    fn sweep_each_millisecond(&mut self, last_sweep: &mut u32) {
        let ms = self.pipeline.now();
        if ms != *last_sweep {
            *last_sweep = ms;
            let budget = busy_sweep_budget(self.pipeline.flows().high_water());
            self.pipeline.expire(budget);
        }
    }

    /// Idle iterations before sleeping. Busy: never. Adaptive: after
    /// about 50 µs without frames. Interrupt: as soon as an iteration
    /// finds nothing.
    fn spin_limit(&self) -> u32 {
        match self.poll {
            PollMode::Busy => u32::MAX,
            PollMode::Adaptive => SPIN_BEFORE_SLEEP,
            PollMode::Interrupt => 1,
        }
    }

    /// No frame is on its way out on either socket (sleeping then would
    /// hold their completions back).
    fn nothing_in_flight(&self) -> bool {
        let sandbox = self.sandbox.as_ref().map_or(0, |s| s.port.tx_in_flight());
        self.port.tx_in_flight() + sandbox == 0
    }

    /// Sleeps in `poll()` on the sockets and the wake-up eventfd, up to
    /// `SLEEP_MS`, unless something is waiting in `queues` (the hand-off,
    /// local and return queues), the sandbox queue or the commands; true
    /// when it slept the whole time.
    fn sleep(&mut self, shared: &WorkerShared, queues: [&ArrayQueue<FrameToken>; 3]) -> bool {
        shared.sleeping.store(true, Ordering::SeqCst);
        let mut timed_out = false;
        if queues.iter().all(|q| q.is_empty())
            && (self.sandbox.is_none() || self.exchange.to_sandbox.is_empty())
            && self.commands.is_empty()
            && !self.stop.load(Ordering::Relaxed)
        {
            use std::os::fd::AsFd;
            let mut fds = vec![
                nix::poll::PollFd::new(self.port.as_fd(), nix::poll::PollFlags::POLLIN),
                nix::poll::PollFd::new(shared.wake.as_fd(), nix::poll::PollFlags::POLLIN),
            ];
            if let Some(sb) = &self.sandbox {
                fds.push(nix::poll::PollFd::new(
                    sb.port.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                ));
            }
            timed_out = matches!(
                nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(SLEEP_MS)),
                Ok(0)
            );
            if fds[1]
                .revents()
                .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLIN))
            {
                let _ = shared.wake.read();
            }
        }
        shared.sleeping.store(false, Ordering::SeqCst);
        timed_out
    }
}

/// Copies the data of `from_t` (in `from`) into the empty frame `to_t` (in
/// `to`) at the standard headroom. False when it does not fit (frames of
/// both UMEMs have the same size, so only a corrupt length does not).
fn copy_frame(from: &Umem, from_t: &mut FrameToken, to: &Umem, to_t: &mut FrameToken) -> bool {
    let len = from_t.len() as usize;
    let (src, so) = from.frame(from_t);
    let (dst, doff) = to.frame(to_t);
    let (Some(s), Some(d)) = (src.get(so..so + len), dst.get_mut(doff..doff + len)) else {
        return false;
    };
    d.copy_from_slice(s);
    to.set_data(to_t, doff, len);
    true
}
