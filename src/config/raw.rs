//! The configuration file's shapes as `serde` reads them, before any
//! value is checked: unknown keys are errors, everything else is as the
//! user wrote it. [`super::validate`] turns them into the typed
//! configuration; the `*Spec` shapes are also the control API's.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ClientIp, OutlierDetection, PollMode, Protocol, Scheduler};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) node: RawNode,
    pub(super) ingress: Option<RawIngress>,
    pub(super) swarm: Option<RawSwarm>,
    #[serde(default)]
    pub(super) timeouts: RawTimeouts,
    #[serde(default)]
    pub(super) flows: RawFlows,
    #[serde(default)]
    pub(super) control: RawControl,
    #[serde(default, rename = "service")]
    pub(super) services: Vec<ServiceSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    pub(super) interface: String,
    pub(super) address: Option<String>,
    pub(super) address6: Option<String>,
    pub(super) queues: Option<Vec<u32>>,
    #[serde(default)]
    pub(super) poll: PollMode,
    pub(super) frames_per_queue: Option<u32>,
    pub(super) batch_size: Option<u32>,
    #[serde(default)]
    pub(super) xdp_mode: Option<String>,
    pub(super) cpus: Option<Vec<usize>>,
    pub(super) checksum: Option<String>,
    /// Read as `mesh_port` too, its earlier name.
    #[serde(alias = "mesh_port")]
    pub(super) announce_port: Option<u16>,
    pub(super) announce_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIngress {
    pub(super) vni: Option<i64>,
    pub(super) port: Option<i64>,
    pub(super) subnet: String,
    pub(super) address: String,
    pub(super) mac: Option<String>,
    pub(super) mtu: Option<i64>,
    pub(super) sandbox: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSwarm {
    pub(super) socket: Option<String>,
    pub(super) resync: Option<f64>,
    pub(super) manager: Option<String>,
    pub(super) sandbox: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub(super) tcp_syn: Option<i64>,
    pub(super) tcp_established: Option<i64>,
    pub(super) tcp_closing: Option<i64>,
    pub(super) tcp_close: Option<i64>,
    pub(super) udp: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFlows {
    pub(super) max: Option<i64>,
    pub(super) snat_ports: Option<[i64; 2]>,
    pub(super) new_per_second: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControl {
    pub(super) socket: Option<PathBuf>,
    pub(super) metrics: Option<String>,
    pub(super) stats_interval: Option<f64>,
}

/// A service as the configuration file and the control API describe it,
/// before validation.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    #[serde(default)]
    pub scheduler: Scheduler,
    /// `"preserve"`: tasks see the client's address (Docker label
    /// `meshgate.client-ip=preserve`).
    #[serde(default)]
    pub client_ip: ClientIp,
    /// `"off"`: no passive health checks of the tasks (Docker label
    /// `meshgate.outlier-detection=off`); on by default.
    #[serde(default)]
    pub outlier_detection: OutlierDetection,
    #[serde(default)]
    pub publish: Vec<PublishSpec>,
    #[serde(default)]
    pub tasks: Vec<TaskSpec>,
}

/// A published port before validation.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublishSpec {
    pub published: i64,
    pub target: i64,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
}

pub(super) fn default_protocol() -> Protocol {
    Protocol::Tcp
}

/// A task before validation.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub address: String,
    pub node: String,
    pub mac: Option<String>,
    pub weight: Option<i64>,
}
