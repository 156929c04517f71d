//! meshgate: a kernel-bypass (AF_XDP) ingress routing mesh for Docker Swarm
//! published ports.
//!
//! Layers, bottom-up: [`wire`] (header views, no I/O), [`dataplane`] (the
//! per-packet pipeline as plain functions over frames), [`xdp`] (the only
//! module with `unsafe`: UMEM, rings, sockets, the XDP program and its maps),
//! [`control`] (configuration, tables, the control thread and its API).
#![deny(unsafe_code)]

pub mod control;
pub mod dataplane;
pub mod lab;
pub mod runtime;
pub mod swarm_lab;
pub mod wire;
pub mod xdp;
