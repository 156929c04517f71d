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

/// The Prometheus endpoint: `GET /metrics` over plain HTTP/1.0.
pub struct MetricsServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
}

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
        let thread = std::thread::Builder::new().name("mg-metrics".into()).spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 1024];
                        let n = s.read(&mut buf).unwrap_or(0);
                        let head = String::from_utf8_lossy(&buf[..n]);
                        let resp = if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics\r") {
                            let r = ask(&calls, &bell, Request::Metrics {});
                            let body = r.data.as_str().unwrap_or_default().to_string();
                            format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                        } else {
                            "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
                        };
                        let _ = s.write_all(resp.as_bytes());
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

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
