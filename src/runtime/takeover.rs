//! Takeover: a new meshgate process replaces a running one without
//! dropping a connection; and the flow-state files it and a restart read.
//!
//! The exchange runs over the old process's control socket:
//! 1. new → old [`Request::Handover`] (flow-state version, workers, SNAT
//!    ports): the old one checks that its flows fit the new one (else it
//!    refuses and keeps serving), its workers stop, export their flows and
//!    close their sockets, and it writes the flows to files next to the
//!    control socket ([`flows_path`]) and answers with their names.
//! 2. The new one binds its sockets (the queues are free now), restores
//!    the flows into its workers before they start, and swaps its program
//!    in for the old one in one step (`XDP_FLAGS_REPLACE`).
//! 3. new → old [`Request::HandoverDone`]: the old one answers how many
//!    frames its program dropped for want of a socket between 1 and 2, and
//!    exits, leaving the program (now the new one's) attached and its
//!    tasks' return paths in place.
//!
//! Between 1 and 2 frames for meshgate are dropped (and counted), never
//! passed to the kernel, which would reset their connections: TCP
//! retransmits what was dropped.
//!
//! A new process that fails between 1 and 3 sends
//! [`Request::HandoverAbort`] (from [`Successor`]'s drop), and the old
//! one, whose workers are gone, detaches its program and exits non-zero
//! for its supervisor to restart it; it does the same when 3 never comes
//! within 30 s.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::api::{HandoverDoneView, HandoverView, Request, Response};
use crate::dataplane::handover::{self, FlowRecord, Origin};

#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error(
        "--takeover: no meshgate answers on {path} ({source}); start without --takeover, or give the running one's --control path"
    )]
    NoPredecessor {
        path: String,
        source: std::io::Error,
    },
    #[error("--takeover: the running meshgate refused: {0}")]
    Refused(String),
    #[error("--takeover: talking to the running meshgate on {path}: {why}")]
    Exchange { path: String, why: String },
}

/// `<control socket>.flows.<worker>`: one file per worker, beside the
/// socket (under `/run/meshgate/` by default, a tmpfs: gone at reboot,
/// when no flow survives anyway).
pub fn flows_path(control: &Path, worker: usize) -> PathBuf {
    let mut name = control.as_os_str().to_owned();
    name.push(format!(".flows.{worker}"));
    PathBuf::from(name)
}

/// `<control socket>.journal.<worker>`: the worker's crash journal
/// (`dataplane::journal`), 64 bytes per flow of its share of `flows.max`.
pub fn journal_path(control: &Path, worker: usize) -> PathBuf {
    let mut name = control.as_os_str().to_owned();
    name.push(format!(".journal.{worker}"));
    PathBuf::from(name)
}

/// Reads and validates the journal a killed meshgate left; `None` when
/// there is none. The file stays: the new journal replaces it.
pub fn read_journal(path: &Path) -> Option<Result<(Origin, Vec<FlowRecord>), String>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(format!("{}: {e}", path.display()))),
    };
    Some(
        crate::dataplane::journal::read(&bytes)
            .map(|j| {
                if j.unreadable > 0 {
                    log::warn!(
                        "{}: {} slot(s) unreadable (written as the process died?), skipped",
                        path.display(),
                        j.unreadable
                    );
                }
                (j.origin, j.flows)
            })
            .map_err(|e| format!("{}: {e}", path.display())),
    )
}

/// Writes a worker's flows atomically (a new file, then a rename), the
/// file private to meshgate's user ([`create_private`]).
pub fn write_flows(path: &Path, origin: Origin, records: &[FlowRecord]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    create_private(&tmp)?.write_all(&handover::encode(origin, records))?;
    std::fs::rename(&tmp, path)
}

/// Creates `path` for writing, mode 0600, as a new file: a link or file
/// someone left at that name is removed first, never followed (`O_EXCL`
/// and `O_NOFOLLOW` refuse whatever appears there in between).
pub fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// Of the flow files a predecessor names, those this process expects:
/// `<control socket>.flows.<worker>` for one of its `workers`. Anything
/// else (another path, another worker count's file) is left alone.
pub fn expected_flow_files(control: &Path, workers: usize, named: &[PathBuf]) -> Vec<PathBuf> {
    named
        .iter()
        .filter(|f| {
            let ok = (0..workers).any(|w| **f == flows_path(control, w));
            if !ok {
                log::warn!(
                    "the predecessor named {} as a flow file; not one of ours: ignored",
                    f.display()
                );
            }
            ok
        })
        .cloned()
        .collect()
}

/// Reads and validates a worker's flows; the file is removed either way
/// (a state is used once: read again later it would be stale).
pub fn take_flows(path: &Path) -> Result<(Origin, Vec<FlowRecord>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let _ = std::fs::remove_file(path);
    handover::decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The new process's side of the exchange.
pub struct Successor {
    finished: bool,
    path: PathBuf,
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    pub started: Instant,
    /// When the old process's sockets were closed (its answer).
    pub released: Instant,
    pub view: HandoverView,
}

fn exchange(
    path: &Path,
    stream: &mut UnixStream,
    reader: &mut BufReader<UnixStream>,
    req: &Request,
) -> Result<Response, TakeoverError> {
    let why = |why: String| TakeoverError::Exchange {
        path: path.display().to_string(),
        why,
    };
    let mut line = serde_json::to_vec(req).map_err(|e| why(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(|e| why(e.to_string()))?;
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .map_err(|e| why(e.to_string()))?;
    if answer.is_empty() {
        return Err(why("it closed the connection".into()));
    }
    serde_json::from_str(&answer).map_err(|e| why(format!("its answer: {e}")))
}

impl Successor {
    /// Step 1: asks the meshgate on `path` for its flows.
    pub fn request(
        path: &Path,
        workers: u16,
        snat_ports: (u16, u16),
    ) -> Result<Successor, TakeoverError> {
        let started = Instant::now();
        let mut stream =
            UnixStream::connect(path).map_err(|source| TakeoverError::NoPredecessor {
                path: path.display().to_string(),
                source,
            })?;
        // Freezing the workers and writing the files takes milliseconds;
        // this only bounds a wedged predecessor.
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let mut reader =
            BufReader::new(stream.try_clone().map_err(|e| TakeoverError::Exchange {
                path: path.display().to_string(),
                why: e.to_string(),
            })?);
        let req = Request::Handover {
            version: handover::VERSION,
            workers,
            snat_ports,
        };
        let resp = exchange(path, &mut stream, &mut reader, &req)?;
        if !resp.ok {
            return Err(TakeoverError::Refused(resp.error.unwrap_or_default()));
        }
        let view: HandoverView =
            serde_json::from_value(resp.data).map_err(|e| TakeoverError::Exchange {
                path: path.display().to_string(),
                why: format!("its answer: {e}"),
            })?;
        Ok(Successor {
            finished: false,
            path: path.to_path_buf(),
            stream,
            reader,
            started,
            released: Instant::now(),
            view,
        })
    }

    /// Step 3: the new program is attached; the old process reports the
    /// frames its program dropped meanwhile, and exits.
    pub fn finish(mut self) -> Result<u64, TakeoverError> {
        self.finished = true;
        let resp = exchange(
            &self.path,
            &mut self.stream,
            &mut self.reader,
            &Request::HandoverDone {},
        )?;
        if !resp.ok {
            return Err(TakeoverError::Refused(resp.error.unwrap_or_default()));
        }
        let v: HandoverDoneView =
            serde_json::from_value(resp.data).map_err(|e| TakeoverError::Exchange {
                path: self.path.display().to_string(),
                why: format!("its answer: {e}"),
            })?;
        Ok(v.dropped)
    }
}

impl Drop for Successor {
    /// Dropped before [`Successor::finish`]: this process failed after it
    /// took the flows, and the old one must know (its workers are gone).
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let _ = self.stream.set_read_timeout(Some(Duration::from_secs(2)));
        let req = Request::HandoverAbort {
            reason: format!(
                "process {} could not start after it took the flows (its log says why)",
                std::process::id()
            ),
        };
        let _ = exchange(&self.path, &mut self.stream, &mut self.reader, &req);
    }
}

/// What this process took over, for the statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TakeoverStats {
    /// Takeovers in the chain of processes that led to this one.
    pub takeovers: u64,
    /// Flows this process started with (from a predecessor or a state
    /// left by a stopped one).
    pub flows_carried: u64,
    /// Flows in those states that could not be put back (task gone,
    /// clash, no room).
    pub flows_left_out: u64,
    /// The last takeover: from the request to the attached program, and
    /// the frames dropped meanwhile.
    pub switch_ms: Option<f64>,
    pub switch_dropped: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_files_are_private_and_follow_no_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("mg-private-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let path = dir.join("control.sock.flows.0");
        // Someone plants a link at the temporary name.
        std::os::unix::fs::symlink(&victim, path.with_extension("tmp")).unwrap();
        let origin = Origin {
            worker: 0,
            workers: 1,
            snat_ports: (1024, 65535),
        };
        write_flows(&path, origin, &[]).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        assert_eq!(take_flows(&path).unwrap().0, origin);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_successor_takes_only_the_flow_files_it_expects() {
        let control = Path::new("/run/meshgate/control.sock");
        let named = vec![
            flows_path(control, 0),
            PathBuf::from("/etc/shadow"),
            flows_path(control, 1),
            flows_path(control, 7),
        ];
        assert_eq!(
            expected_flow_files(control, 2, &named),
            vec![flows_path(control, 0), flows_path(control, 1)]
        );
    }

    #[test]
    fn flow_files_sit_beside_the_control_socket() {
        assert_eq!(
            flows_path(Path::new("/run/meshgate/control.sock"), 1),
            PathBuf::from("/run/meshgate/control.sock.flows.1")
        );
    }

    #[test]
    fn a_state_is_read_once_and_a_corrupt_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("mg-takeover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock.flows.0");
        let origin = Origin {
            worker: 0,
            workers: 1,
            snat_ports: (1024, 65535),
        };
        write_flows(&path, origin, &[]).unwrap();
        assert_eq!(take_flows(&path).unwrap(), (origin, vec![]));
        assert!(!path.exists(), "a state is used once");
        let e = take_flows(&path).unwrap_err();
        assert!(e.contains("c.sock.flows.0"), "{e}");
        // This version, then nothing.
        let mut truncated = b"MGFLOWS\0".to_vec();
        truncated.extend_from_slice(&crate::dataplane::handover::VERSION.to_le_bytes());
        std::fs::write(&path, &truncated).unwrap();
        let e = take_flows(&path).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
