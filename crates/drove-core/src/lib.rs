//! drove's core model: identifiers, the job/stage/task model, the sans-I/O scheduler
//! and the coordinator's metadata state machine.
//!
//! Architecture invariant: this crate depends on no other drove crate and performs no
//! I/O. Everything here is driven by events and answers with commands, so it can be
//! tested and simulated without sockets or clocks.

pub mod access;
pub mod catalog;
pub mod fs;
pub mod ids;
pub mod meta;
pub mod rng;
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

/// The text of a caught panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-text panic".into()
    }
}

/// At most `max_bytes` of `text`, cut at a character boundary, saying how much was cut.
pub fn truncate_text(mut text: String, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text;
    }
    let mut cut = max_bytes;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let dropped = text.len() - cut;
    text.truncate(cut);
    text.push_str(&format!("... ({dropped} more bytes)"));
    text
}

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

/// Parses a size such as `256MiB`, `2GiB`, `1.5G`, `512k` or `1048576` (bytes). Units are
/// binary (K = KiB = 1024 bytes) and case-insensitive; a trailing `B` is optional.
pub fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let bad = || {
        format!("'{text}' is not a size; write it as a number with a unit, such as 256MiB or 2GiB")
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let scale: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = number * scale as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::{parse_bytes, truncate_text};

    #[test]
    fn long_texts_are_cut_at_a_character_boundary_saying_how_much() {
        assert_eq!(truncate_text("short".into(), 16), "short");
        let cut = truncate_text("aé".repeat(10), 4);
        assert_eq!(cut, "aéa... (26 more bytes)");
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("2g"), Ok(2 << 30));
        assert_eq!(parse_bytes("1.5 GB"), Ok(3 << 29));
        assert_eq!(parse_bytes("512k"), Ok(512 << 10));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        for bad in ["", "MiB", "12 parsecs", "-1GiB", "1..2M"] {
            let e = parse_bytes(bad).unwrap_err();
            assert!(e.contains("256MiB"), "{bad}: {e}");
        }
    }
}
