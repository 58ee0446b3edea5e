//! drove's core model: identifiers, the job/stage/task model, the sans-I/O scheduler
//! and the coordinator's metadata state machine.
//!
//! Architecture invariant: this crate depends on no other drove crate and performs no
//! I/O. Everything here is driven by events and answers with commands, so it can be
//! tested and simulated without sockets or clocks.

pub mod ids;
pub mod meta;
pub mod scheduler;

pub use ids::{AttemptId, JobId, StageId, TaskId, WorkerId};

/// Errors of the core model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A job was described in a way the scheduler cannot run.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// An internal invariant was broken: a bug in drove.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
