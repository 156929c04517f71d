//! Servers of the control API: the Unix socket (JSON lines) and the optional
//! Prometheus `/metrics` endpoint. Both hand requests to the control thread
//! through a channel and wake it; neither touches data-plane state.

use crate::runtime::doorbell::Doorbell;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::{Sender, bounded};

use crate::api::{Request, Response};

/// A request and where to send its answer.
pub struct ApiCall {
    pub req: Request,
    pub reply: Sender<Response>,
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
    accept: AcceptLoop,
}

impl ApiServer {
    pub fn start(
        path: &Path,
        calls: Sender<ApiCall>,
        bell: Arc<Doorbell>,
    ) -> std::io::Result<ApiServer> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
            check_control_dir(dir)?;
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
        let slots = Arc::new(Slots::new(API_CONCURRENT, API_CONCURRENT));
        let conn = move |s| serve(s, &calls, &bell);
        let accept = AcceptLoop::spawn("mg-api", listener, move |listener| {
            let accept = || listener.accept().map(|(s, _)| (s, ()));
            serve_accepted(&slots, accept, "mg-api-conn", &conn)
        })?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            inode,
            accept,
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.accept.stop();
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

/// The control socket's directory also holds the flow files and crash
/// journals a successor takes: it must be root's or meshgate's user's,
/// and writable by no one else unless sticky (as `/tmp`), where no one
/// else can replace what meshgate made.
fn check_control_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir)?;
    let me = nix::unistd::geteuid().as_raw();
    let open = m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0;
    if (m.uid() != 0 && m.uid() != me) || open {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "the control socket's directory {} (owner uid {}, mode {:o}) must be root's or this user's and writable by no one else (or sticky, as /tmp): chmod go-w it, or give --control a path in a directory of meshgate's own",
                dir.display(),
                m.uid(),
                m.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Control connections served at once; more wait in the listen backlog.
const API_CONCURRENT: usize = 16;
/// A control connection that sends no request for this long is closed
/// (`stats --watch` asks every second or so).
const API_IDLE: Duration = Duration::from_secs(60);

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
    let _ = s.set_read_timeout(Some(API_IDLE));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
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
    /// Held for its `Drop`, which ends the accept loop.
    _accept: AcceptLoop,
    pub addr: SocketAddr,
}

/// Connections served at once; more wait in the listen backlog.
const HTTP_CONCURRENT: usize = 8;
/// Of those, from one client address: one client cannot take them all.
const HTTP_PER_CLIENT: usize = HTTP_CONCURRENT / 2;
/// The whole time a client has to send its request's head, however it
/// spaces its bytes.
const HTTP_HEAD_DEADLINE: Duration = Duration::from_secs(2);

impl MetricsServer {
    pub fn start(
        addr: SocketAddr,
        calls: Sender<ApiCall>,
        bell: Arc<Doorbell>,
    ) -> std::io::Result<MetricsServer> {
        let l = TcpListener::bind(addr)?;
        let addr = l.local_addr()?;
        l.set_nonblocking(true)?;
        let slots = Arc::new(Slots::new(HTTP_CONCURRENT, HTTP_PER_CLIENT));
        let conn = move |s| serve_http(s, &calls, &bell);
        let accept = AcceptLoop::spawn("mg-metrics", l, move |l| {
            let accept = || l.accept().map(|(s, peer)| (s, peer.ip()));
            serve_accepted(&slots, accept, "mg-http", &conn)
        })?;
        Ok(MetricsServer {
            _accept: accept,
            addr,
        })
    }
}

/// The connections a server serves at once: at most `total`, and at most
/// `per_key` with one key (a client's address; `()` where there is none).
#[derive(Debug)]
struct Slots<K> {
    total: usize,
    per_key: usize,
    taken: std::sync::Mutex<std::collections::HashMap<K, usize>>,
}

/// One connection's share of [`Slots`], given back when dropped (when its
/// thread ends, or with the thread's closure when it cannot be spawned).
struct Slot<K: std::hash::Hash + Eq> {
    slots: Arc<Slots<K>>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Copy> Slots<K> {
    fn new(total: usize, per_key: usize) -> Slots<K> {
        Slots {
            total,
            per_key,
            taken: Default::default(),
        }
    }

    fn taken(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<K, usize>> {
        self.taken.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn full(&self) -> bool {
        self.taken().values().sum::<usize>() >= self.total
    }

    /// A slot for a connection with `key`, unless that key has its share.
    fn take(self: &Arc<Self>, key: K) -> Option<Slot<K>> {
        let mut m = self.taken();
        let n = m.entry(key).or_insert(0);
        if *n >= self.per_key {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: self.clone(),
            key,
        })
    }
}

impl<K: std::hash::Hash + Eq> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut m = self.slots.taken.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// One step of an accept loop ([`AcceptLoop`]) whose connections are each
/// served by `serve` on a thread of their own named `thread`, within
/// `slots`: takes every queued connection `accept` gives (with its key)
/// until none is left or the slots are full, and says when to look again.
/// A connection over its key's share is closed at once; one whose thread
/// cannot be made is closed and its slot given back with the closure.
fn serve_accepted<S, K>(
    slots: &Arc<Slots<K>>,
    mut accept: impl FnMut() -> std::io::Result<(S, K)>,
    thread: &str,
    serve: &(impl Fn(S) + Clone + Send + 'static),
) -> Option<Duration>
where
    S: Send + 'static,
    K: std::hash::Hash + Eq + Copy + Send + 'static,
{
    loop {
        if slots.full() {
            // The rest wait in the backlog; look again soon.
            return Some(Duration::from_millis(5));
        }
        let (s, key) = match accept() {
            Ok(c) => c,
            Err(e) => return accept_pause(&e),
        };
        let Some(slot) = slots.take(key) else {
            continue;
        };
        let serve = serve.clone();
        let spawned = std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || {
                serve(s);
                drop(slot);
            });
        if spawned.is_err() {
            return Some(Duration::from_millis(20));
        }
    }
}

/// After a failed `accept`: none (wait for the next connection) when the
/// backlog was empty, else a pause, so that an error that persists (out of
/// descriptors) is not retried in a spin while the backlog stays readable.
fn accept_pause(e: &std::io::Error) -> Option<Duration> {
    match e.kind() {
        std::io::ErrorKind::WouldBlock => None,
        std::io::ErrorKind::Interrupted => Some(Duration::ZERO),
        _ => Some(Duration::from_millis(20)),
    }
}

/// A listener's accept loop on a thread of its own, asleep in `poll(2)`
/// until a connection or [`AcceptLoop::stop`] arrives: a node's idle
/// meshgate makes no periodic wake-ups here (such wake-ups land on the
/// CPU the control thread shares with everything but the workers).
struct AcceptLoop {
    stop: Arc<nix::sys::eventfd::EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl AcceptLoop {
    /// Runs `ready` whenever `listener` may have connections to accept
    /// (it must not block: the listener is non-blocking). When `ready`
    /// returns a pause, the listener is not watched for that long (a
    /// connection waiting in the backlog would wake `poll` at once), then
    /// `ready` runs again.
    fn spawn<L: AsFd + Send + 'static>(
        name: &str,
        listener: L,
        mut ready: impl FnMut(&L) -> Option<Duration> + Send + 'static,
    ) -> std::io::Result<AcceptLoop> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let stop = Arc::new(nix::sys::eventfd::EventFd::from_flags(
            nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
        )?);
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut pause: Option<Duration> = None;
                loop {
                    let mut fds = [
                        PollFd::new(st.as_fd(), PollFlags::POLLIN),
                        PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                    ];
                    let (watched, timeout) = match pause {
                        Some(d) => (
                            1,
                            PollTimeout::try_from(d.as_millis() as u32).unwrap_or(PollTimeout::MAX),
                        ),
                        None => (2, PollTimeout::NONE),
                    };
                    match poll(&mut fds[..watched], timeout) {
                        Err(nix::errno::Errno::EINTR) => continue,
                        // Not expected of poll on valid descriptors; never
                        // spin on it.
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                        Ok(_) => {}
                    }
                    // The stop signal is never read: it stays set.
                    if fds[0].any().unwrap_or(false) {
                        return;
                    }
                    pause = ready(&listener);
                }
            })?;
        Ok(AcceptLoop {
            stop,
            thread: Some(thread),
        })
    }

    /// Ends the loop and waits for its thread.
    fn stop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The page may run its inline script and style and fetch from here;
/// nothing else, from nowhere else.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:";

/// One request on one connection.
fn serve_http(mut s: std::net::TcpStream, calls: &Sender<ApiCall>, bell: &Doorbell) {
    let _ = s.set_nonblocking(false);
    // A client that stops reading must not hold one of the few slots.
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let deadline = std::time::Instant::now() + HTTP_HEAD_DEADLINE;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    // httparse: RFC 9112's request grammar; anything it does not take
    // whole (malformed, cut, too many headers) is a bad request.
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut slots);
    let (method, target) = match req.parse(&head) {
        Ok(httparse::Status::Complete(_)) => (req.method.unwrap_or(""), req.path.unwrap_or("")),
        _ => ("", ""),
    };
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
            ("", _) => (
                "400 Bad Request",
                "text/plain",
                "not an HTTP/1.x request\n".into(),
                "",
            ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// The thread of this process named `name`, and how many times it has
    /// been put on a CPU (`schedstat`'s third field).
    fn runs_of(name: &str) -> Option<u64> {
        for t in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim() == name {
                let s = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
                return s.split_whitespace().nth(2)?.parse().ok();
            }
        }
        None
    }

    /// A directory removed when dropped (also when the test fails).
    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn listener(tag: &str) -> (TempDir, PathBuf, UnixListener) {
        let dir = std::env::temp_dir().join(format!("mg-accept-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let dir = TempDir(dir);
        let path = dir.0.join("s.sock");
        let l = UnixListener::bind(&path).expect("bind");
        l.set_nonblocking(true).expect("non-blocking");
        (dir, path, l)
    }

    #[test]
    fn an_idle_accept_loop_sleeps_and_wakes_for_a_connection() {
        let (_dir, path, l) = listener("idle");
        let (tx, rx) = crossbeam::channel::unbounded();
        let mut al = AcceptLoop::spawn("mg-test-idle", l, move |l| {
            while let Ok((s, _)) = l.accept() {
                let _ = tx.send(s);
            }
            None
        })
        .expect("spawn");
        std::thread::sleep(Duration::from_millis(50));
        let before = runs_of("mg-test-idle").expect("the loop's thread in /proc/self/task");
        std::thread::sleep(Duration::from_millis(400));
        let after = runs_of("mg-test-idle").expect("the loop's thread");
        // The old loop slept 20 ms between tries: 20 runs here.
        assert!(
            after - before <= 1,
            "an idle accept loop ran {} times in 400 ms",
            after - before
        );
        let _c = UnixStream::connect(&path).expect("connect");
        assert!(
            rx.recv_timeout(Duration::from_secs(5)).is_ok(),
            "the connection was not accepted"
        );
        al.stop();
        assert!(
            runs_of("mg-test-idle").is_none(),
            "the loop's thread outlived stop()"
        );
    }

    #[test]
    fn a_paused_accept_loop_does_not_spin_on_a_waiting_connection() {
        let (_dir, path, l) = listener("full");
        let calls = Arc::new(AtomicU32::new(0));
        let n = calls.clone();
        // Never accepts, as a server at its limit: the connection stays in
        // the backlog and keeps the listener readable.
        let _al = AcceptLoop::spawn("mg-test-full", l, move |_| {
            n.fetch_add(1, Ordering::Relaxed);
            Some(Duration::from_millis(50))
        })
        .expect("spawn");
        let _c = UnixStream::connect(&path).expect("connect");
        std::thread::sleep(Duration::from_millis(500));
        let c = calls.load(Ordering::Relaxed);
        assert!(
            (1..=12).contains(&c),
            "a 50 ms pause over 500 ms ran the accept step {c} times"
        );
    }

    /// Eight clients from one address that send a byte of their request
    /// every second (inside any per-read timeout) hold at most half the
    /// slots, and each is closed at the head's deadline: another client
    /// is served at once.
    #[test]
    fn slow_clients_hold_neither_every_slot_nor_theirs_for_long() {
        use std::net::{Ipv4Addr, TcpStream};
        let (calls, _rx) = crossbeam::channel::unbounded();
        let m = MetricsServer::start(
            (Ipv4Addr::LOCALHOST, 0).into(),
            calls,
            Doorbell::new().expect("doorbell"),
        )
        .expect("server");
        let slow_client = || {
            use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn};
            use std::os::fd::AsRawFd;
            let fd = nix::sys::socket::socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::empty(),
                None,
            )
            .expect("socket");
            nix::sys::socket::bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 2, 0))
                .expect("bind 127.0.0.2");
            let to = SockaddrIn::new(127, 0, 0, 1, m.addr.port());
            nix::sys::socket::connect(fd.as_raw_fd(), &to).expect("connect");
            let mut s = TcpStream::from(fd);
            s.write_all(b"G").expect("first byte");
            s
        };
        let mut slow: Vec<TcpStream> = (0..HTTP_CONCURRENT).map(|_| slow_client()).collect();
        let t0 = std::time::Instant::now();
        let dribble = std::thread::spawn(move || {
            let mut closed = 0;
            for _ in 0..4 {
                std::thread::sleep(Duration::from_secs(1));
                for s in &mut slow {
                    let _ = s.write_all(b"E");
                }
            }
            for s in &mut slow {
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .expect("timeout");
                let mut b = [0u8; 16];
                if matches!(s.read(&mut b), Ok(0) | Err(_)) {
                    closed += 1;
                }
            }
            closed
        });
        std::thread::sleep(Duration::from_millis(200));
        let mut c = TcpStream::connect(m.addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("request");
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer);
        assert!(
            answer.starts_with(b"HTTP/1.0 200 OK"),
            "{:?} after {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(40)]),
            t0.elapsed()
        );
        assert_eq!(
            dribble.join().expect("dribbler"),
            HTTP_CONCURRENT,
            "all closed"
        );
    }

    /// Idle control connections beyond the cap wait in the backlog: the
    /// next one is served once one of them closes, not before.
    #[test]
    fn control_connections_are_capped() {
        let dir = TempDir(std::env::temp_dir().join(format!("mg-api-cap-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).expect("temporary directory");
        let path = dir.0.join("control.sock");
        let (calls, rx) = crossbeam::channel::unbounded::<ApiCall>();
        // The control thread's part: answers every call.
        std::thread::spawn(move || {
            while let Ok(call) = rx.recv() {
                let _ = call.reply.send(Response::ok(serde_json::json!("pong")));
            }
        });
        let server =
            ApiServer::start(&path, calls, Doorbell::new().expect("doorbell")).expect("server");
        let mut idle: Vec<UnixStream> = (0..API_CONCURRENT)
            .map(|_| UnixStream::connect(&path).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut c = UnixStream::connect(&path).expect("connect");
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        c.write_all(b"{\"cmd\": \"services\"}\n").expect("request");
        let mut line = String::new();
        let mut r = BufReader::new(c.try_clone().expect("clone"));
        assert!(
            r.read_line(&mut line).is_err(),
            "served beyond the cap: {line}"
        );
        idle.pop();
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        r.read_line(&mut line).expect("served once a slot is free");
        assert!(line.contains("pong"), "{line}");
        drop(server);
    }

    #[test]
    fn a_control_directory_others_may_write_is_refused_unless_sticky() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir(std::env::temp_dir().join(format!("mg-ctl-dir-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).expect("temporary directory");
        let set = |mode| std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(mode));
        set(0o755).expect("chmod");
        assert!(check_control_dir(&dir.0).is_ok());
        set(0o777).expect("chmod");
        let e = check_control_dir(&dir.0)
            .expect_err("world-writable")
            .to_string();
        assert!(e.contains("mode 777") && e.contains("chmod go-w"), "{e}");
        set(0o1777).expect("chmod");
        assert!(check_control_dir(&dir.0).is_ok(), "sticky");
    }

    #[test]
    fn a_persistent_accept_error_pauses() {
        let e = std::io::Error::from_raw_os_error(nix::libc::EMFILE);
        assert_eq!(accept_pause(&e), Some(Duration::from_millis(20)));
        let e = std::io::Error::from(std::io::ErrorKind::WouldBlock);
        assert_eq!(accept_pause(&e), None);
    }
}
