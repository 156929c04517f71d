//! Docker as a source of truth: the Engine API's client (`engine`) and
//! what its answers mean for the routing mesh: a manager's services, tasks
//! and nodes (`swarm`), and the ingress network's view every node can read
//! (`ingress_view`).

/// The test-support crate's recorded Docker answers, for the unit tests:
/// not shipped.
#[cfg(test)]
#[path = "../../testkit/src/docker.rs"]
pub mod docker_fixtures;
pub mod engine;
pub mod ingress_view;
pub mod swarm;

use std::path::Path;

use crate::config::SwarmFacts;

/// This node's swarm facts from the Docker socket at `socket`: the
/// discovery the configuration's validation asks (`config::Discover`).
pub fn discover(socket: &Path) -> Result<SwarmFacts, String> {
    swarm::discover(&engine::Docker::new(socket)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn discovery_names_a_missing_socket() {
        let text = "[node]\ninterface = \"eth0\"\n[swarm]\nsocket = \"/nonexistent/meshgate/docker.sock\"\n";
        let e = Config::parse_with(text, "swarm.toml", &mut super::discover).unwrap_err();
        assert_eq!(e.key, "swarm.socket");
        assert!(
            e.message
                .contains("cannot connect to the Docker socket /nonexistent/meshgate/docker.sock"),
            "{e}"
        );
    }
}
