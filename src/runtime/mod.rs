//! A running meshgate, in three parts:
//!
//! - the process and its threads (here): [`run`] (signals, reloads, the
//!   periodic summary, the end), [`start`]'s [`Forwarder`] (program,
//!   sockets, workers, control state), the pinned [`worker`]s, the
//!   [`control`] thread and its answers to API requests ([`handlers`]),
//!   the XDP programs' places ([`attach`]), the ingress sandbox's socket
//!   ([`sandbox`]), [`takeover`]s, and the [`doorbell`] that wakes the
//!   control thread;
//! - [`serve`]: what meshgate serves to the outside, its control socket
//!   and its HTTP listener, and what they show (statistics, `/metrics`,
//!   the status page);
//! - [`swarm`]: following Docker (events and reads), and the client's
//!   address across nodes (this node's return paths, other nodes'
//!   announcements).
//!
//! `serve` and `swarm` name nothing of the assembly (`start`, `control`,
//! this module): it puts them together (`testkit/tests/layering.rs`).

pub mod attach;
pub mod control;
pub mod doorbell;
pub mod handlers;
pub mod sandbox;
pub mod serve;
mod start;
pub mod swarm;
pub mod takeover;
pub mod worker;

pub use start::Forwarder;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::{Config, ConfigError, ConfigSource};
use crate::netlink::NetlinkError;
use crate::xdp::XskError;
use crate::xdp::bpf::BpfError;

use self::control::Control;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Xsk(#[from] XskError),
    #[error(transparent)]
    Sandbox(#[from] self::sandbox::SandboxError),
    #[error(transparent)]
    Attach(#[from] self::attach::AttachError),
    #[error(
        "node.queues: queue {queue} does not exist on {interface}, which has {available} RX queue(s) (see `ethtool -l {interface}`)"
    )]
    NoSuchQueue {
        interface: String,
        queue: u32,
        available: u32,
    },
    #[error(
        "{interface} has MTU {mtu}: frames of that size do not fit a {frame} byte UMEM frame with {headroom} bytes of headroom; lower the MTU to 1500"
    )]
    MtuTooLarge {
        interface: String,
        mtu: u32,
        frame: u32,
        headroom: usize,
    },
    #[error("{0}")]
    Setup(String),
    #[error("worker {0} stopped unexpectedly; the XDP program has been detached")]
    WorkerDied(usize),
    #[error(
        "a takeover failed after this meshgate handed over its flows ({0}); the XDP program has been detached and the flows stay in the journals for the next start"
    )]
    HandoverFailed(String),
}

/// Options of `meshgate run` that are not in the configuration file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where the configuration came from (None: built in, no reload).
    pub source: Option<ConfigSource>,
    /// Print a one-line summary this often (None: never).
    pub summary_every: Option<Duration>,
    /// Stop after this long (tests, demos).
    pub duration: Option<Duration>,
    /// Control socket path (None: no API).
    pub control_socket: Option<PathBuf>,
    /// Write the statistics as JSON here at every summary and on exit.
    pub stats_file: Option<PathBuf>,
    /// Take over from the meshgate serving `control_socket`
    /// ([`takeover`]).
    pub takeover: bool,
}

/// UMEM frame size: a 1500-byte frame, the kernel's headroom and the
/// VXLAN headers fit in 2 KiB.
pub const FRAME_SIZE: u32 = 2048;

/// `meshgate run`: forwards until SIGINT/SIGTERM (or `opts.duration`).
pub fn run(cfg: Config, opts: RunOptions) -> Result<(), RunError> {
    // A panic anywhere is a bug: the process ends at once, as on SIGKILL,
    // so that the XDP programs stay (dropping, not resetting) and the
    // journals keep the flows for the restart; unwinding would detach the
    // programs and end every flow through the node.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    let (stop, hup) = signals()?;
    let iface = cfg.node.interface.clone();
    refuse_a_second_meshgate(&opts)?;
    let mut fwd = Forwarder::start(cfg, &opts, stop.clone())?;
    serve_control_socket(&mut fwd, &opts)?;
    log_forwarding(&fwd, &iface);
    write_stats(&fwd.control, opts.stats_file.as_deref());
    match serve(&mut fwd, &opts, &stop, &hup) {
        Ending::HandedOver => {
            let control = fwd.hand_over();
            log::info!("{}", control.summary_line());
            write_stats(&control, opts.stats_file.as_deref());
            log::info!("taken over; exiting, the XDP program on {iface} is the new meshgate's");
            Ok(())
        }
        Ending::HandoverFailed(why) => {
            // Its workers are gone: exit non-zero (a supervisor restarts
            // it, taking the flows from the journals), the program
            // detached so that nothing is black-holed meanwhile.
            let control = fwd.abandon();
            log::info!("{}", control.summary_line());
            write_stats(&control, opts.stats_file.as_deref());
            log::error!("takeover failed; XDP program detached from {iface}, exiting non-zero");
            Err(RunError::HandoverFailed(why))
        }
        Ending::Stopped(died) => {
            let workers = fwd.workers();
            let control = fwd.shutdown();
            log::info!("{}", control.summary_line());
            write_stats(&control, opts.stats_file.as_deref());
            // Stopped on purpose, the program detached: the flows end
            // here, and a later start must not take them for a crash's.
            if let Some(path) = &opts.control_socket {
                for w in 0..workers {
                    let _ = std::fs::remove_file(takeover::journal_path(path, w));
                }
            }
            log::info!("stopped; XDP program detached from {iface}");
            match died {
                Some(w) => Err(RunError::WorkerDied(w)),
                None => Ok(()),
            }
        }
    }
}

/// SIGINT and SIGTERM stop, SIGHUP reloads: the flags they set.
fn signals() -> Result<(Arc<AtomicBool>, Arc<AtomicBool>), RunError> {
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    let setup = |e: std::io::Error| RunError::Setup(format!("signal handler: {e}"));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(setup)?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone()).map_err(setup)?;
    Ok((stop, hup))
}

/// Another meshgate on the control socket is refused, unless this one
/// takes over from it.
fn refuse_a_second_meshgate(opts: &RunOptions) -> Result<(), RunError> {
    if let Some(path) = &opts.control_socket {
        if !opts.takeover && std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(RunError::Setup(format!(
                "another meshgate answers on {}: to replace it without dropping connections, start this one with --takeover; to run both, give this one another --control path (and another interface)",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Serves the control socket (after a takeover, once the predecessor has
/// removed its own) and, when configured, the metrics listener.
fn serve_control_socket(fwd: &mut Forwarder, opts: &RunOptions) -> Result<(), RunError> {
    let Some(path) = &opts.control_socket else {
        return Ok(());
    };
    if opts.takeover {
        let t0 = std::time::Instant::now();
        while std::os::unix::net::UnixStream::connect(path).is_ok()
            && t0.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    fwd.control
        .serve_api(path)
        .map_err(|e| RunError::Setup(format!("control socket {}: {e}", path.display())))?;
    log::info!("control socket {}", path.display());
    if let Some(a) = fwd.control.metrics_addr() {
        log::info!("metrics on http://{a}/metrics");
    }
    Ok(())
}

fn log_forwarding(fwd: &Forwarder, iface: &str) {
    log::info!(
        "forwarding on {iface} ({} queue(s), {} mode, {} TCP/UDP checksums); published ports answer on {}",
        fwd.workers(),
        if fwd.control.zero_copy() {
            "zero-copy"
        } else {
            "copy"
        },
        match fwd.control.snapshot().identity.l4_checksum {
            crate::dataplane::tables::L4Checksum::Full => "full",
            crate::dataplane::tables::L4Checksum::CompletePartial => "partial-completing",
            crate::dataplane::tables::L4Checksum::Incremental => "incremental",
        },
        fwd.control.snapshot().identity.node_addr
    );
}

/// How the control loop ended.
enum Ending {
    /// A signal, `--duration`, or a worker that died (its index).
    Stopped(Option<usize>),
    /// A successor took over.
    HandedOver,
    /// A successor took the flows and failed.
    HandoverFailed(String),
}

/// The control loop: control work, reloads, summaries, until it ends.
fn serve(fwd: &mut Forwarder, opts: &RunOptions, stop: &AtomicBool, hup: &AtomicBool) -> Ending {
    let started = std::time::Instant::now();
    let mut last_summary = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        fwd.control.step(Duration::from_millis(50));
        if hup.swap(false, Ordering::Relaxed) {
            match fwd.control.reload() {
                Ok(msg) => log::info!("reload: {msg}"),
                Err(e) => log::warn!("reload rejected, tables unchanged: {e}"),
            }
        }
        if let Some(every) = opts.summary_every {
            if last_summary.elapsed() >= every {
                log::info!("{}", fwd.control.summary_line());
                write_stats(&fwd.control, opts.stats_file.as_deref());
                last_summary = std::time::Instant::now();
            }
        }
        if opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if fwd.control.handed_over() {
            return Ending::HandedOver;
        }
        if let Some(why) = fwd.control.handover_failed() {
            return Ending::HandoverFailed(why);
        }
        if let Some(w) = fwd.dead_worker().filter(|_| !fwd.control.handing_over()) {
            return Ending::Stopped(Some(w));
        }
    }
    Ending::Stopped(None)
}

/// Writes the statistics JSON atomically (write, then rename).
fn write_stats(control: &Control, path: Option<&std::path::Path>) {
    let Some(path) = path else { return };
    let tmp = path.with_extension("tmp");
    let view = control.stats_view();
    let written = std::fs::write(&tmp, serde_json::to_vec_pretty(&view).unwrap_or_default())
        .and_then(|()| std::fs::rename(&tmp, path));
    // Said once a minute at most: the file is rewritten every
    // `control.stats_interval`, and a full disk would fill the log too.
    static LAST_WARNED: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    if let Err(e) = written {
        let mut last = LAST_WARNED.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            log::warn!("writing the statistics to {}: {e}", path.display());
            *last = Some(std::time::Instant::now());
        }
    }
}
