//! meshgate: a kernel-bypass (AF_XDP) ingress routing mesh for Docker Swarm
//! published ports.
//!
//! Layers, bottom-up: [`wire`] (header views, no I/O), [`dataplane`] (the
//! per-packet pipeline as plain functions over frames, the description
//! its tables are built from, and the formats a worker's flows leave the
//! process in: a takeover's handover and a crash's journal), [`xdp`] (the
//! only module with `unsafe`: UMEM, rings, sockets, the XDP program and
//! its maps, the shared file the journal is written to), the sources of
//! truth that translate into the data plane's types — [`config`] (the file,
//! its validation, the command line's overrides), [`docker`] (the Engine
//! API client and what a swarm's answers mean), [`netlink`] (links,
//! addresses, neighbours, routes, policy-routing rules), [`nftables`] (one
//! table replaced or deleted in one transaction) — and [`api`] (the control API's
//! requests and typed answers), then [`runtime`] (assembly: sockets,
//! workers, the control thread, statistics, `/metrics`, the status page, the API servers,
//! the swarm follower, the socket in the ingress sandbox for tasks on this
//! node, the XDP programs' places on their interfaces, which outlive the
//! process, and the takeover of a running meshgate by a new one). [`return_path`] installs, in a task's namespace on its node, the
//! way back to the ingress node for services that preserve the client's
//! address, and [`announce`] is what the nodes' meshgates tell each other
//! about those ways back. `docs/architecture.md`
//! shows a packet's path through them. Test support (labs, fixtures,
//! benchmark programs, the demo and the benchmark driver) lives in the
//! workspace's `meshgate-testkit` crate, not here.
#![deny(unsafe_code)]

// The unit tests include test-support files that name this crate
// `meshgate::`, as the test-support crate does.
#[cfg(test)]
extern crate self as meshgate;

pub mod announce;
pub mod api;
pub mod config;
pub mod dataplane;
pub mod docker;
pub mod netlink;
pub mod nftables;
pub mod return_path;
pub mod runtime;
pub mod wire;
pub mod xdp;
