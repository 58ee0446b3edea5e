//! What the fuzz targets share: when a panic counts as a crash.
//!
//! libfuzzer-sys aborts at every panic, even one drove catches and turns into an error
//! (a library's panic at a decoding boundary, see `drove_exec::fuzz`). By default only
//! a panic that escapes drove's decoder counts: others pass quietly. With
//! `DROVE_FUZZ_UPSTREAM=1` every panic counts, to find the libraries' own bugs.

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

thread_local! {
    /// The last panic's message and location, for a panic that escapes.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs one of `drove_exec::fuzz`'s decoders on one input; aborts if a panic escapes it.
pub fn run(decode: fn(&[u8]) -> bool, data: &[u8]) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        if std::env::var_os("DROVE_FUZZ_UPSTREAM").is_none() {
            std::panic::set_hook(Box::new(|info| {
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
            }));
        }
    });
    if catch_unwind(AssertUnwindSafe(|| decode(data))).is_err() {
        let panic = LAST_PANIC.with(|p| p.borrow_mut().take());
        eprintln!(
            "a panic escaped drove's decoder: {}",
            panic.as_deref().unwrap_or("(reported above)")
        );
        std::process::abort();
    }
}
