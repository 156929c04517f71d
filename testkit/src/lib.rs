//! meshgate's test support, kept out of the shipped crate: the namespace
//! labs ([`lab`], [`swarm_lab`]) and a meshgate process beside them
//! ([`harness`]), the pipeline's fixture frames and tables
//! ([`fixtures`]), the announcement key file ([`keys`]), recorded Docker answers ([`docker`]), a headless
//! browser for the status page ([`browser`]) and the programs
//! only the benchmark and the labs load ([`programs`]). A dev-dependency of
//! meshgate's tests and benchmark; the benchmark driver and the demo are
//! this crate's binaries, and its tests include the callgrind guard
//! (`tests/instructions.rs`), which needs the benchmark driver built (cargo
//! builds a package's binaries for its own integration tests).
//!
//! meshgate's own unit tests include `fixtures.rs` and `docker.rs` by path,
//! which is why those two name everything through `meshgate::` paths.

pub mod browser;
pub mod docker;
pub mod fixtures;
pub mod harness;
pub mod keys;
pub mod lab;
pub mod programs;
pub mod swarm_lab;
