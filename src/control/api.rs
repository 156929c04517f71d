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

use super::config::{PublishSpec, Scheduler, ServiceSpec, TaskSpec};

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

    pub fn err(e: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(e.into()),
            data: Value::Null,
        }
    }
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
