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

/// Bytes as B, KiB, MiB or GiB.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
