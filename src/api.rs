//! The control API: one JSON request per line on a Unix socket, one JSON
//! response per line back.
//!
//! The socket is created mode 0600 and the server also checks the peer's
//! credentials (`SO_PEERCRED`): only root and meshgate's own user may talk
//! to it. Changes made through the API live until the next reload of the
//! configuration file, which replaces them.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{Protocol, PublishSpec, Scheduler, ServiceSpec, TaskSpec};
use crate::dataplane::counters::TaskCounters;

/// A request to a running meshgate.
#[derive(Debug, Clone, Serialize, Deserialize)]
// Variants without fields are written `Name {}` so that
// `deny_unknown_fields` applies to them too.
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Services, like `docker service ls`.
    Services {},
    /// The tasks of a service, like `docker service ps`.
    Tasks {
        service: String,
    },
    /// The balancing table, like `ipvsadm -ln`.
    Ipvs {},
    /// All statistics.
    Stats {},
    /// Statistics in the Prometheus text format.
    Metrics {},
    /// What the status page shows: the node, services and tasks with
    /// their rates, drops, batch latency, the forwarded rate's history.
    Status {},
    /// Re-read the configuration file.
    Reload {},
    /// Change a service.
    Update {
        service: String,
        #[serde(default)]
        task_add: Vec<TaskSpec>,
        #[serde(default)]
        task_rm: Vec<Ipv4Addr>,
        #[serde(default)]
        weight: Vec<(Ipv4Addr, i64)>,
        #[serde(default)]
        publish_add: Vec<PublishSpec>,
        #[serde(default)]
        publish_rm: Vec<PublishSpec>,
        #[serde(default)]
        scheduler: Option<Scheduler>,
    },
    Create {
        service: ServiceSpec,
    },
    Remove {
        service: String,
    },
    /// A new meshgate (`run --takeover`) asks this one for its flows: the
    /// workers stop, their flows go to files next to the control socket,
    /// their sockets close. Refused, and nothing changes, when `version`
    /// (of the flow state) or the workers and SNAT ports differ.
    Handover {
        version: u32,
        workers: u16,
        snat_ports: (u16, u16),
    },
    /// The new meshgate's program is attached: this one reports what its
    /// program dropped meanwhile and exits.
    HandoverDone {},
    /// The new meshgate failed after it took the flows: this one detaches
    /// its program and exits non-zero, for its supervisor to restart it
    /// (its flows are in its journals).
    HandoverAbort {
        reason: String,
    },
}

/// The answer to a request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: Value,
}

impl Response {
    pub fn ok(data: Value) -> Response {
        Response {
            ok: true,
            error: None,
            data,
        }
    }

    /// A successful answer carrying one of the views below.
    pub fn of<T: Serialize>(data: &T) -> Response {
        match serde_json::to_value(data) {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(format!("encoding the answer: {e}")),
        }
    }

    pub fn err(e: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(e.into()),
            data: Value::Null,
        }
    }
}

// The answers' data, defined once: the server builds these and the CLI
// reads them, so a renamed field is a decoding error, not an empty column.

/// The answer to [`Request::Handover`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverView {
    /// One flow-state file per worker, in worker order.
    pub files: Vec<std::path::PathBuf>,
    pub flows: usize,
    /// Takeovers before this one (the chain of processes so far).
    pub takeovers: u64,
    pub pid: u32,
}

/// The answer to [`Request::HandoverDone`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverDoneView {
    /// Frames for meshgate that met no socket since the workers stopped.
    pub dropped: u64,
}

/// A published port, in the answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortView {
    pub published: u16,
    pub target: u16,
    pub protocol: Protocol,
}

/// One service, in the answer to [`Request::Services`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub mark: u32,
    pub scheduler: String,
    /// `snat` (tasks see the sandbox's address) or `preserve` (the client's).
    pub client_ip: String,
    pub publish: Vec<PortView>,
    /// Tasks that take new flows (running), and all tasks.
    pub tasks_up: usize,
    pub tasks_total: usize,
}

/// One task, in the answer to [`Request::Tasks`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    pub address: Ipv4Addr,
    pub node: Ipv4Addr,
    pub mac: String,
    pub weight: u32,
    /// `running`, `draining` (weight 0), `ejected` (passive health took
    /// it out of new-flow selection for a while) or `unresolved-skipped`.
    pub state: String,
    /// Times passive health ejected the task, and what is left of the
    /// current ejection.
    #[serde(default)]
    pub ejections: u64,
    #[serde(default)]
    pub ejected_for_ms: u32,
    /// The source address its new flows carry: `snat`, `preserve`, or
    /// `snat-fallback` (the service preserves, but the task's node has no
    /// return path to this node).
    pub client_ip: String,
    pub active_flows: u32,
    pub inactive_flows: u32,
    /// Flows created since the task appeared.
    pub flows: u64,
    pub counters: TaskCounters,
}

/// One fwmark service, in the answer to [`Request::Ipvs`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpvsService {
    pub service: String,
    pub fwmark: u32,
    pub scheduler: String,
    pub client_ip: String,
    pub reals: Vec<IpvsReal>,
}

/// One real server (task) of an [`IpvsService`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpvsReal {
    pub address: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    pub active: u32,
    pub inactive: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "cannot reach meshgate at {path}: {err} (is `meshgate run` running, and is this its --control socket?)"
    )]
    Connect { path: String, err: std::io::Error },
    #[error("talking to meshgate: {0}")]
    Io(#[from] std::io::Error),
    #[error("meshgate sent an answer that is not JSON: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("{0}")]
    Refused(String),
}

/// Sends one request and decodes its answer's data as `T`.
pub fn call_as<T: serde::de::DeserializeOwned>(path: &Path, req: &Request) -> Result<T, ApiError> {
    Ok(serde_json::from_value(call(path, req)?)?)
}

/// Sends one request and waits for its answer.
pub fn call(path: &Path, req: &Request) -> Result<Value, ApiError> {
    let mut s = UnixStream::connect(path).map_err(|err| ApiError::Connect {
        path: path.display().to_string(),
        err,
    })?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer)?;
    let r: Response = serde_json::from_str(&answer)?;
    if r.ok {
        Ok(r.data)
    } else {
        Err(ApiError::Refused(
            r.error.unwrap_or_else(|| "refused".into()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each view survives the trip through JSON, and a missing field is an
    /// error rather than an empty value.
    #[test]
    fn views_round_trip() {
        fn trip<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(v: T) {
            let text = serde_json::to_string(&v).unwrap();
            assert_eq!(serde_json::from_str::<T>(&text).unwrap(), v, "{text}");
            // Drop the first field: decoding must fail.
            let mut obj: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
            let first = obj.keys().next().unwrap().clone();
            obj.remove(&first);
            assert!(
                serde_json::from_value::<T>(Value::Object(obj)).is_err(),
                "{first} missing went unnoticed"
            );
        }
        let port = PortView {
            published: 8080,
            target: 80,
            protocol: Protocol::Tcp,
        };
        trip(port.clone());
        trip(ServiceView {
            name: "web".into(),
            mark: 0x100,
            scheduler: "rr".into(),
            client_ip: "preserve".into(),
            publish: vec![port],
            tasks_up: 2,
            tasks_total: 3,
        });
        trip(TaskView {
            address: Ipv4Addr::new(198, 18, 128, 4),
            node: Ipv4Addr::new(198, 18, 0, 11),
            mac: "02:42:c6:12:80:04".into(),
            weight: 1,
            state: "ejected".into(),
            ejections: 2,
            ejected_for_ms: 9_000,
            client_ip: "snat-fallback".into(),
            active_flows: 1,
            inactive_flows: 2,
            flows: 3,
            counters: TaskCounters {
                packets_in: 4,
                bytes_in: 5,
                packets_out: 6,
                bytes_out: 7,
                flows: 3,
            },
        });
        let real = IpvsReal {
            address: Ipv4Addr::new(198, 18, 128, 4),
            port: 80,
            weight: 1,
            active: 1,
            inactive: 0,
        };
        trip(real.clone());
        trip(IpvsService {
            service: "web".into(),
            fwmark: 0x100,
            scheduler: "rr".into(),
            client_ip: "preserve".into(),
            reals: vec![real],
        });
    }

    #[test]
    fn wire_shape() {
        let r: Request = serde_json::from_str(
            r#"{"cmd":"update","service":"web","weight":[["198.18.128.4",0]]}"#,
        )
        .unwrap();
        match r {
            Request::Update {
                service,
                weight,
                task_add,
                ..
            } => {
                assert_eq!(service, "web");
                assert_eq!(weight, vec![(Ipv4Addr::new(198, 18, 128, 4), 0)]);
                assert!(task_add.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"services","extra":1}"#).is_err());
        let text = serde_json::to_string(&Request::Tasks {
            service: "web".into(),
        })
        .unwrap();
        assert_eq!(text, r#"{"cmd":"tasks","service":"web"}"#);
    }
}
