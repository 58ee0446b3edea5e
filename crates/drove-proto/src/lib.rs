//! The wire contract of drove.
//!
//! API boundary: this is the only crate that knows the protobuf encoding. Other crates
//! convert these messages into their own plain Rust types at the edge.

#![allow(clippy::large_enum_variant, clippy::doc_overindented_list_items)]

/// Messages and services of `proto/drove.proto` (package `drove.v1`). The code is
/// generated and checked in, so a build compiles no protobuf compiler: after changing
/// the .proto file, run `cargo run --manifest-path crates/drove-proto/codegen/Cargo.toml`.
pub mod v1 {
    include!("generated/drove.v1.rs");
}

pub use prost::Message;
pub use v1::*;

/// The largest gRPC message any drove endpoint accepts or sends (64 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The metadata key of a replicated coordinator's `UNAVAILABLE` answer that names the
/// leader's gRPC address (HOST:PORT): it does not lead, ask there.
pub const LEADER_HEADER: &str = "drove-leader";
