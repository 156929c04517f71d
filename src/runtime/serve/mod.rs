//! What a running meshgate serves: the control socket and the HTTP
//! listener ([`servers`]), the statistics gathered from the workers'
//! reports ([`stats`]), their Prometheus text ([`metrics`]) and the status
//! page and its JSON view ([`status`]).

pub mod metrics;
pub mod servers;
pub mod stats;
pub mod status;
