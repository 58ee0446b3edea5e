//! A node's data directory (`--data-dir`): created if needed, and locked while one
//! process uses it (`LOCK`, held as long as the returned file stays open), so that two
//! coordinators or two workers cannot share one.

use std::fs::{File, OpenOptions};
use std::path::Path;

const LOCK: &str = "LOCK";

/// Creates `dir` if needed and takes its lock for `owner` ("coordinator", "worker"),
/// or says what is wrong and what to do.
pub fn lock(dir: &Path, owner: &str) -> Result<File, String> {
    let fail = |what: &str, e: std::io::Error| {
        format!(
            "cannot {what} {}: {e}; pass --data-dir a directory this user can write",
            dir.display()
        )
    };
    std::fs::create_dir_all(dir).map_err(|e| fail("create the data directory", e))?;
    let path = dir.join(LOCK);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| fail("write in the data directory", e))?;
    lock.try_lock().map_err(|e| match e {
        std::fs::TryLockError::WouldBlock => format!(
            "the data directory {} is in use by another {owner}; stop it, or give this one a --data-dir of its own",
            dir.display()
        ),
        std::fs::TryLockError::Error(e) => format!("cannot lock {}: {e}", path.display()),
    })?;
    Ok(lock)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_directory_is_locked_for_one_owner_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("made");
        let held = super::lock(&inner, "worker").unwrap();
        let e = super::lock(&inner, "worker").unwrap_err();
        assert!(e.contains("is in use by another worker"), "{e}");
        drop(held);
        super::lock(&inner, "worker").unwrap();
    }
}
