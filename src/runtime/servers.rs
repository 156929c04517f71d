//! Servers of the control API: the Unix socket (JSON lines) and the optional
//! Prometheus `/metrics` endpoint. Both hand requests to the control thread
//! through a channel and wake it; neither touches data-plane state.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::{Sender, bounded};

use crate::api::{Request, Response};

/// A request and where to send its answer.
pub struct ApiCall {
    pub req: Request,
    pub reply: Sender<Response>,
}

/// Wakes the control thread when a call is queued.
pub struct Doorbell(pub nix::sys::eventfd::EventFd);

impl Doorbell {
    pub fn new() -> std::io::Result<Arc<Doorbell>> {
        Ok(Arc::new(Doorbell(nix::sys::eventfd::EventFd::from_flags(
            nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
        )?)))
    }

    pub fn ring(&self) {
        let _ = self.0.write(1);
    }

    pub fn clear(&self) {
        let _ = self.0.read();
    }
}

fn ask(calls: &Sender<ApiCall>, bell: &Doorbell, req: Request) -> Response {
    let (tx, rx) = bounded(1);
    if calls.send(ApiCall { req, reply: tx }).is_err() {
        return Response::err("meshgate is stopping");
    }
    bell.ring();
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| Response::err("meshgate did not answer in 30 s"))
}

/// The Unix-socket server; removes its socket file when dropped.
pub struct ApiServer {
    path: PathBuf,
    /// The socket file this server made: after a takeover the path may
    /// already be the successor's, which is not removed.
    inode: Option<(u64, u64)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    pub fn start(
        path: &Path,
        calls: Sender<ApiCall>,
        bell: Arc<Doorbell>,
    ) -> std::io::Result<ApiServer> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                        "another meshgate answers on {}; give this one another --control path",
                        path.display()
                    ),
                ));
            }
            // A socket left by a meshgate that died, or by one that is
            // exiting after a takeover and may remove it first.
            match std::fs::remove_file(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                r => r?,
            }
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let inode = inode_of(path);
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("mg-api".into())
            .spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let calls = calls.clone();
                            let bell = bell.clone();
                            std::thread::spawn(move || serve(s, &calls, &bell));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            inode,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.inode.is_some() && inode_of(&self.path) == self.inode {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn inode_of(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Only root and meshgate's own user may use the socket (the file mode says
/// the same; this also holds if someone loosens it).
fn peer_allowed(s: &UnixStream) -> bool {
    match nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials) {
        Ok(c) => c.uid() == 0 || c.uid() == nix::unistd::geteuid().as_raw(),
        Err(_) => false,
    }
}

fn serve(s: UnixStream, calls: &Sender<ApiCall>, bell: &Doorbell) {
    let _ = s.set_nonblocking(false);
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    if !peer_allowed(&s) {
        let _ = writeln!(
            w,
            "{}",
            serde_json::to_string(&Response::err(
                "permission denied: only root and meshgate's user may use the control socket"
            ))
            .unwrap_or_default()
        );
        return;
    }
    let mut r = BufReader::new(s.take(1 << 20));
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => ask(calls, bell, req),
            Err(e) => Response::err(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_vec(&resp).unwrap_or_default();
        out.push(b'\n');
        if w.write_all(&out).is_err() {
            return;
        }
    }
}

/// The HTTP listener of `control.metrics`: `GET /metrics` (Prometheus),
/// `GET /` (the status page) and `GET /status.json` (its data), over
/// HTTP/1.0, read-only. It has no authentication: bind it to a management
/// address, never to one that faces the internet.
pub struct MetricsServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
}

/// Connections served at once; more wait in the listen backlog.
const HTTP_CONCURRENT: usize = 8;

impl MetricsServer {
    pub fn start(
        addr: SocketAddr,
        calls: Sender<ApiCall>,
        bell: Arc<Doorbell>,
    ) -> std::io::Result<MetricsServer> {
        let l = TcpListener::bind(addr)?;
        let addr = l.local_addr()?;
        l.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let thread = std::thread::Builder::new()
            .name("mg-metrics".into())
            .spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    if busy.load(Ordering::Acquire) >= HTTP_CONCURRENT {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    match l.accept() {
                        Ok((s, _)) => {
                            let (calls, bell, busy) = (calls.clone(), bell.clone(), busy.clone());
                            busy.fetch_add(1, Ordering::AcqRel);
                            let spawned = std::thread::Builder::new().name("mg-http".into()).spawn(
                                move || {
                                    serve_http(s, &calls, &bell);
                                    busy.fetch_sub(1, Ordering::AcqRel);
                                },
                            );
                            if spawned.is_err() {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })?;
        Ok(MetricsServer {
            stop,
            thread: Some(thread),
            addr,
        })
    }
}

/// The page may run its inline script and style and fetch from here;
/// nothing else, from nowhere else.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:";

/// One request on one connection.
fn serve_http(mut s: std::net::TcpStream, calls: &Sender<ApiCall>, bell: &Doorbell) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    // A client that stops reading must not hold one of the few slots.
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = head
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, kind, body, extra): (&str, &str, std::borrow::Cow<'_, str>, &str) =
        match (method, path) {
            ("GET", "/metrics") => {
                let r = ask(calls, bell, Request::Metrics {});
                let body = r.data.as_str().unwrap_or_default().to_string();
                ("200 OK", "text/plain; version=0.0.4", body.into(), "")
            }
            ("GET", "/" | "/index.html") => (
                "200 OK",
                "text/html; charset=utf-8",
                super::status::PAGE.into(),
                "",
            ),
            ("GET", "/status.json") => {
                let r = ask(calls, bell, Request::Status {});
                let body = if r.ok {
                    serde_json::to_string(&r.data).unwrap_or_default()
                } else {
                    serde_json::json!({ "error": r.error }).to_string()
                };
                let status = if r.ok {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                (status, "application/json", body.into(), "")
            }
            ("GET", _) => ("404 Not Found", "text/plain", "not found\n".into(), ""),
            _ => (
                "405 Method Not Allowed",
                "text/plain",
                "read-only: GET /, /status.json or /metrics\n".into(),
                "Allow: GET\r\n",
            ),
        };
    let resp = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nContent-Security-Policy: {PAGE_POLICY}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes());
    let _ = s.write_all(body.as_bytes());
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
