//! Configuration, validation, the table builder, the control thread and its API.

pub mod api;
pub mod config;
pub mod engine;
pub mod ingress_view;
pub mod netlink;
pub mod swarm;
