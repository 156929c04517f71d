//! meshgate: a kernel-bypass (AF_XDP) ingress routing mesh for Docker Swarm
//! published ports.
//!
//! Layers, bottom-up: [`wire`] (header views, no I/O), [`dataplane`] (the
//! per-packet pipeline as plain functions over frames), [`xdp`] (the only
//! module with `unsafe`: UMEM, rings, sockets, the XDP program and its maps),
//! [`control`] (the configuration, the control API's protocol, netlink and
//! Docker's Engine API), [`runtime`] (assembly: sockets, workers, the
//! control thread, statistics, API servers, the swarm follower, the socket
//! in the ingress sandbox for tasks on this node). Test
//! support ships here for now: [`lab`] and [`swarm_lab`] (the namespace
//! labs) and `dataplane::fixtures`. `docs/architecture.md` shows a
//! packet's path through them.
#![deny(unsafe_code)]

pub mod control;
pub mod dataplane;
pub mod lab;
pub mod runtime;
pub mod swarm_lab;
pub mod wire;
pub mod xdp;
