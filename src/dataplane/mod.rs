//! The data plane: per-packet work as plain functions over frames, testable
//! and benchmarkable without a NIC.
//!
//! Each worker owns a [`pipeline::Pipeline`]: its flow table, counters and
//! the current [`tables::Snapshot`]. Nothing on the per-packet path is shared
//! mutable state except one atomic cursor per service (round robin) and the
//! per-task flow counts, touched once per flow event, never per packet.
//!
//! A worker's flows can leave the process and come back ([`handover`]:
//! the format a takeover carries them in; [`journal`]: the same records
//! mirrored slot by slot into memory that outlives a crash).
//!
//! The tables are built from [`desc::TableDesc`], which the data plane
//! owns: no module here imports configuration or control types (the unit
//! tests' fixtures, from the test-support crate, do).

pub mod counters;
pub mod desc;
/// The test-support crate's fixtures, for the unit tests: not shipped.
#[cfg(test)]
#[path = "../../testkit/src/fixtures.rs"]
pub mod fixtures;
pub mod flow;
pub mod fragments;
pub mod handover;
pub mod health;
pub mod index;
pub mod journal;
pub mod pipeline;
pub mod sched;
pub mod tables;
pub mod xlat;

pub use counters::DropReason;
pub use pipeline::{FrameBuf, Pipeline, Verdict};
