//! Docker's Engine API over its Unix socket: the smallest HTTP/1.1 client
//! the API needs (`GET` only, `Connection: close`, `Content-Length` or
//! chunked bodies) and the long-lived event stream. It knows nothing of
//! what the answers mean; `swarm` and `ingress_view` do.
//!
//! Invariants: every failure is an [`EngineError`] naming the request,
//! never a panic; a response larger than 64 MiB is refused; a request
//! takes at most its client's timeout in all, however Docker dribbles.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Largest HTTP response meshgate accepts from Docker: a swarm with
/// thousands of tasks answers in a few MiB.
const MAX_RESPONSE: usize = 64 << 20;

/// Why a request to the Engine API failed, on the way or in Docker.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "cannot connect to the Docker socket {path}: {err} (is dockerd running, and is this its socket?)"
    )]
    Connect {
        path: String,
        // Not a `source`: the message already says it, and error chains
        // would print it twice.
        err: std::io::Error,
    },
    #[error("Docker API GET {request}: {source}")]
    Io {
        request: String,
        source: std::io::Error,
    },
    #[error("Docker API GET {request}: malformed HTTP response: {what}")]
    Http { request: String, what: String },
    #[error("Docker API GET {request}: HTTP {status}: {message}")]
    Status {
        request: String,
        status: u16,
        message: String,
    },
    #[error("Docker API GET {request}: the body is not JSON: {what}")]
    NotJson { request: String, what: String },
}

/// An HTTP response, body already de-chunked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Where the header block ends (the index after the blank line).
fn header_end(raw: &[u8]) -> Option<usize> {
    raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses the status line and headers of `raw[..end]` (httparse: RFC
/// 9112's grammar, not a hand-written one).
fn parse_head(head: &[u8]) -> Result<(u16, Vec<(String, String)>), String> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut slots);
    match r.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("the header is incomplete".into()),
        Err(e) => return Err(format!("the header is not HTTP/1.x: {e}")),
    }
    let status = r
        .code
        .filter(|s| (100..600).contains(s))
        .ok_or("the status line has no status code")?;
    let headers = r
        .headers
        .iter()
        .map(|h| {
            let v = std::str::from_utf8(h.value)
                .map_err(|_| format!("header {} is not text", h.name))?;
            Ok((h.name.to_string(), v.trim().to_string()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((status, headers))
}

/// Decodes a complete chunked body (RFC 9112 section 7.1); trailers are
/// ignored.
pub fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let (used, size) = match httparse::parse_chunk_size(body) {
            Ok(httparse::Status::Complete(c)) => c,
            Ok(httparse::Status::Partial) => return Err("chunk size line is not terminated".into()),
            Err(_) => return Err("chunk size is not hexadecimal".into()),
        };
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        body = &body[used..];
        if size == 0 {
            return Ok(out);
        }
        if size > MAX_RESPONSE || out.len() + size > MAX_RESPONSE {
            return Err(format!("chunks exceed {MAX_RESPONSE} bytes"));
        }
        if body.len() < size + 2 {
            return Err("chunk is truncated".into());
        }
        if &body[size..size + 2] != b"\r\n" {
            return Err("chunk is not followed by CRLF".into());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// Parses a complete HTTP/1.1 response (the connection was closed after
/// it).
pub fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let end = header_end(raw).ok_or("no end of headers")?;
    let (status, headers) = parse_head(&raw[..end])?;
    let mut resp = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let rest = &raw[end..];
    resp.body = if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)?
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("Content-Length `{len}` is not a number"))?;
        if rest.len() < len {
            return Err(format!("body is truncated ({} of {len} bytes)", rest.len()));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(resp)
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?filters=` with Docker's JSON filter syntax.
pub fn filters(f: &Value) -> String {
    format!("filters={}", percent_encode(&f.to_string()))
}

/// A client of one Docker Engine API socket.
#[derive(Debug, Clone)]
pub struct Docker {
    socket: PathBuf,
    timeout: Duration,
}

impl Docker {
    pub fn new(socket: &Path) -> Docker {
        Self::with_timeout(socket, Duration::from_secs(10))
    }

    /// A client whose requests take at most `timeout` each, in all.
    pub fn with_timeout(socket: &Path, timeout: Duration) -> Docker {
        Docker {
            socket: socket.to_path_buf(),
            timeout,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn connect(&self) -> Result<UnixStream, EngineError> {
        UnixStream::connect(&self.socket).map_err(|err| EngineError::Connect {
            path: self.socket.display().to_string(),
            err,
        })
    }

    fn send_get(&self, s: &mut UnixStream, request: &str) -> Result<(), EngineError> {
        let io = |source| EngineError::Io {
            request: request.to_string(),
            source,
        };
        s.set_read_timeout(Some(self.timeout)).map_err(io)?;
        s.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let req = format!(
            "GET {request} HTTP/1.1\r\nHost: docker\r\nUser-Agent: meshgate/{}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        s.write_all(req.as_bytes()).map_err(io)
    }

    /// `GET request` and the JSON body of a 200 answer.
    pub fn get(&self, request: &str) -> Result<Value, EngineError> {
        let deadline = Instant::now() + self.timeout;
        let mut s = self.connect()?;
        self.send_get(&mut s, request)?;
        let raw = self.read_answer(&mut s, request, deadline)?;
        let http = |what: String| EngineError::Http {
            request: request.to_string(),
            what,
        };
        if raw.len() > MAX_RESPONSE {
            return Err(http(format!("larger than {MAX_RESPONSE} bytes")));
        }
        let resp = parse_response(&raw).map_err(http)?;
        if resp.status != 200 {
            // Docker explains errors as {"message": "..."}.
            let message = serde_json::from_slice::<Value>(&resp.body)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&resp.body).trim().to_string());
            return Err(EngineError::Status {
                request: request.to_string(),
                status: resp.status,
                message,
            });
        }
        serde_json::from_slice(&resp.body).map_err(|e| EngineError::NotJson {
            request: request.to_string(),
            what: e.to_string(),
        })
    }

    /// Reads an answer to its end, or to one byte past [`MAX_RESPONSE`],
    /// by `deadline`: a timeout per read would let a Docker that sends a
    /// byte now and then hold the reader (and the swarm follower) for as
    /// long as it likes.
    fn read_answer(
        &self,
        s: &mut UnixStream,
        request: &str,
        deadline: Instant,
    ) -> Result<Vec<u8>, EngineError> {
        let io = |source| EngineError::Io {
            request: request.to_string(),
            source,
        };
        let late = || {
            io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no complete answer within {:?}", self.timeout),
            ))
        };
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        while raw.len() <= MAX_RESPONSE {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(late());
            }
            s.set_read_timeout(Some(left)).map_err(io)?;
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(late());
                }
                Err(e) => return Err(io(e)),
            }
        }
        Ok(raw)
    }

    /// Opens the event stream for the given event types. Reading from the
    /// returned stream blocks until Docker reports an event (or `timeout`).
    pub fn events(&self, types: &[&str], timeout: Duration) -> Result<EventStream, EngineError> {
        let request = format!("/events?{}", filters(&serde_json::json!({ "type": types })));
        let mut s = self.connect()?;
        self.send_get(&mut s, &request)?;
        let _ = s.set_read_timeout(Some(timeout));
        Ok(EventStream {
            stream: s,
            request,
            buf: Vec::new(),
            head_done: false,
        })
    }
}

/// A long-lived `GET /events`. Only whether something happened matters to
/// meshgate (it then re-reads the state), so the body is not decoded.
pub struct EventStream {
    stream: UnixStream,
    request: String,
    buf: Vec<u8>,
    head_done: bool,
}

/// What one read of the event stream gave.
#[derive(Debug, PartialEq, Eq)]
pub enum EventRead {
    /// At least one event arrived.
    Event,
    /// Nothing within the timeout.
    Idle,
}

impl EventStream {
    /// Waits for the next event; an error means the stream is gone and a
    /// new one must be opened.
    pub fn wait(&mut self) -> Result<EventRead, EngineError> {
        let mut chunk = [0u8; 4096];
        loop {
            let n = match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(EngineError::Io {
                        request: self.request.clone(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "Docker closed the event stream",
                        ),
                    });
                }
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(EventRead::Idle);
                }
                Err(source) => {
                    return Err(EngineError::Io {
                        request: self.request.clone(),
                        source,
                    });
                }
            };
            if self.head_done {
                return Ok(EventRead::Event);
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = header_end(&self.buf) {
                let (status, _) =
                    parse_head(&self.buf[..end]).map_err(|what| EngineError::Http {
                        request: self.request.clone(),
                        what,
                    })?;
                if status != 200 {
                    return Err(EngineError::Status {
                        request: self.request.clone(),
                        status,
                        message: String::from_utf8_lossy(&self.buf[end..]).trim().to_string(),
                    });
                }
                self.head_done = true;
                let body = self.buf.len() > end;
                self.buf = Vec::new();
                if body {
                    return Ok(EventRead::Event);
                }
            } else if self.buf.len() > 64 << 10 {
                return Err(EngineError::Http {
                    request: self.request.clone(),
                    what: "headers longer than 64 KiB".into(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_responses() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n[1,2\r\n2;x=y\r\n,3\r\n1\r\n]\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"[1,2,3]"[..]));
        let r = parse_response(b"HTTP/1.0 404 Not Found\r\nContent-Length: 5\r\n\r\nhello, more")
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"hello"[..]));
        let r = parse_response(b"HTTP/1.1 200 OK\r\n\r\n{}").unwrap();
        assert_eq!(r.body, b"{}");
        for bad in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"SMTP 200 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn query_encoding() {
        assert_eq!(
            filters(&serde_json::json!({"type": ["service"]})),
            "filters=%7B%22type%22%3A%5B%22service%22%5D%7D"
        );
    }

    #[test]
    fn a_missing_socket_names_itself() {
        let d = Docker::new(Path::new("/nonexistent/meshgate-test/docker.sock"));
        let e = d.get("/info").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/meshgate-test/docker.sock"), "{e}");
        assert!(e.contains("is dockerd running"), "{e}");
    }

    /// A fresh directory (`meshgate-TAG-PID`) with a listening socket in it:
    /// the place of a fake Docker.
    fn fake_engine(tag: &str) -> (PathBuf, PathBuf, std::os::unix::net::UnixListener) {
        let dir = std::env::temp_dir().join(format!("meshgate-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("docker.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        (dir, path, listener)
    }

    /// A Docker that answers a byte every 100 ms never finishes: the
    /// request ends at its deadline, not after 10 s per byte.
    #[test]
    fn a_dribbling_answer_ends_at_the_request_deadline() {
        let (dir, path, listener) = fake_engine("dribble");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
            for _ in 0..50 {
                if s.write_all(b" ").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let d = Docker::with_timeout(&path, Duration::from_millis(800));
        let t0 = Instant::now();
        let e = d.get("/tasks").unwrap_err().to_string();
        let took = t0.elapsed();
        assert!(e.contains("no complete answer within 800ms"), "{e}");
        assert!(took < Duration::from_millis(1_500), "{took:?}");
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_fake_engine_is_read_over_a_unix_socket() {
        // One request per connection, answered from a table: exercises the
        // client's request, chunked decoding and error mapping end to end.
        let (dir, path, listener) = fake_engine("docker");
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = listener.accept().unwrap();
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while header_end(&req).is_none() {
                    let n = s.read(&mut b).unwrap();
                    req.extend_from_slice(&b[..n]);
                }
                let line = String::from_utf8_lossy(&req)
                    .lines()
                    .next()
                    .unwrap()
                    .to_string();
                let resp: &[u8] = if line.starts_with("GET /info ") {
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n{\"Swarm\":{}\r\n1\r\n}\r\n0\r\n\r\n"
                } else {
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 57\r\n\r\n{\"message\":\"This node is not a swarm manager. Use join\"}\n"
                };
                s.write_all(resp).unwrap();
                seen.push(line);
            }
            seen
        });
        let d = Docker::new(&path);
        assert_eq!(d.get("/info").unwrap(), serde_json::json!({"Swarm": {}}));
        let e = d.get("/services").unwrap_err();
        assert!(
            matches!(&e, EngineError::Status { status: 503, message, .. } if message.contains("not a swarm manager")),
            "{e}"
        );
        let seen = server.join().unwrap();
        assert_eq!(seen, ["GET /info HTTP/1.1", "GET /services HTTP/1.1"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
