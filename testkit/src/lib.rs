//! meshgate's test support, kept out of the shipped crate: the namespace
//! labs ([`lab`], [`swarm_lab`]), the pipeline's fixture frames and tables
//! ([`fixtures`]), recorded Docker answers ([`docker`]) and the programs
//! only the benchmark and the labs load ([`programs`]). A dev-dependency of
//! meshgate's tests and benchmark; the benchmark driver and the demo are
//! this crate's binaries.
//!
//! meshgate's own unit tests include `fixtures.rs` and `docker.rs` by path,
//! which is why those two name everything through `meshgate::` paths.

pub mod docker;
pub mod fixtures;
pub mod lab;
pub mod programs;
pub mod swarm_lab;

/// The path of a binary of this workspace built with the same profile as
/// the running test (tests run from `target/<profile>/deps/`; binaries of
/// another package of the workspace sit in `target/<profile>/`). Panics,
/// naming the build command, when it has not been built.
pub fn built_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is not built: run the tests with `cargo test --workspace` (tools/test does), or `cargo build --workspace --bins` with the same profile",
        bin.display()
    );
    bin
}
