//! The sources of truth and their protocols: the configuration file and its
//! validation, the control API's requests and answers, netlink, and
//! Docker's Engine API with what its answers mean.

pub mod api;
pub mod config;
pub mod engine;
pub mod ingress_view;
pub mod netlink;
pub mod swarm;

/// The test-support crate's recorded Docker answers, for the unit tests:
/// not shipped.
#[cfg(test)]
#[path = "../../testkit/src/docker.rs"]
pub mod docker_fixtures;
