//! A worker's directory for spill files.
//!
//! Every worker makes its own directory, `worker-<pid>-<n>`, under the configured work
//! directory, and holds an exclusive lock on the marker file `drove-worker.lock` in it
//! for as long as it runs. The marker says who made it: drove's signature line, then
//! the process and the directory's own name. On start, a worker removes a sibling
//! directory only when it proves to be a dead worker's: the marker is there, carries
//! the signature and the directory's name, and nobody holds its lock. A directory
//! without that proof is never touched, whatever its name (a user's `worker-reports`
//! stays). A worker that stops removes its own directory.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{info, warn};

const PREFIX: &str = "worker-";
/// The marker file, locked while its worker lives.
const MARKER: &str = "drove-worker.lock";
/// The marker's first line.
const SIGNATURE: &str = "drove worker directory v1";
const MAKING: &str = ".making-";
/// A directory still being made after this long was left by a worker that died.
const MAKING_STALE: std::time::Duration = std::time::Duration::from_secs(60);

/// Distinguishes several workers of one process (the embedded cluster).
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A worker's own directory, locked while it lives and removed when dropped.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    /// Held for the lock; closing it releases the lock.
    _lock: File,
}

impl WorkDir {
    /// Makes a new worker directory under `parent` after removing what dead workers
    /// left there.
    pub fn create(parent: &Path) -> Result<Self, String> {
        let fail = |what: &str, path: &Path, e: std::io::Error| {
            format!(
                "cannot {what} {}: {e}; pass --work-dir a directory this user can write",
                path.display()
            )
        };
        fs::create_dir_all(parent).map_err(|e| fail("create the work directory", parent, e))?;
        remove_abandoned(parent);
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // Made under another name, locked, then renamed: a worker starting meanwhile
        // never sees this directory unlocked and takes it for abandoned.
        let making = parent.join(format!("{MAKING}{name}"));
        fs::create_dir(&making).map_err(|e| fail("create", &making, e))?;
        let mut lock = File::create(making.join(MARKER))
            .map_err(|e| fail("create a marker in", &making, e))?;
        lock.try_lock()
            .map_err(|e| fail("lock", &making, std::io::Error::other(e.to_string())))?;
        let identity = format!("{SIGNATURE}\nname={name}\npid={}\n", std::process::id());
        lock.write_all(identity.as_bytes())
            .and_then(|()| lock.sync_all())
            .map_err(|e| fail("write the marker in", &making, e))?;
        for sub in ["blocks", "operators"] {
            fs::create_dir(making.join(sub)).map_err(|e| fail("create", &making.join(sub), e))?;
        }
        let path = parent.join(name);
        fs::rename(&making, &path).map_err(|e| fail("rename", &making, e))?;
        Ok(Self { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where spilled blocks go.
    pub fn blocks(&self) -> PathBuf {
        self.path.join("blocks")
    }

    /// Where DataFusion's operators (sorts, aggregations, joins) spill.
    pub fn operators(&self) -> PathBuf {
        self.path.join("operators")
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            warn!(dir = %self.path.display(), "could not remove the worker's directory: {e}");
        }
    }
}

/// Removes the directories under `parent` of workers that no longer run.
fn remove_abandoned(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let abandoned = if let Some(own) = name.strip_prefix(MAKING) {
            // A worker died while making it; one making it now takes milliseconds.
            owned_by_dead_worker(&path, own)
                && entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > MAKING_STALE))
        } else {
            name.starts_with(PREFIX) && owned_by_dead_worker(&path, &name)
        };
        if abandoned {
            match fs::remove_dir_all(&path) {
                Ok(()) => info!(dir = %path.display(), "removed what a stopped worker left behind"),
                Err(e) => {
                    warn!(dir = %path.display(), "could not remove a stopped worker's directory: {e}")
                }
            }
        }
    }
}

/// Whether `dir` is a worker directory named `name` whose worker is gone: its marker
/// carries drove's signature and that name, and nobody holds the marker's lock.
fn owned_by_dead_worker(dir: &Path, name: &str) -> bool {
    let Ok(mut marker) = File::open(dir.join(MARKER)) else {
        return false;
    };
    let mut head = String::new();
    if (&mut marker).take(4096).read_to_string(&mut head).is_err() {
        return false;
    }
    let mut lines = head.lines();
    let proven = lines.next() == Some(SIGNATURE) && lines.next() == Some(&format!("name={name}"));
    proven && marker.try_lock().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_worker_removes_abandoned_directories_but_not_live_ones() {
        let parent = tempfile::tempdir().unwrap();
        let live = WorkDir::create(parent.path()).unwrap();
        fs::write(live.blocks().join("block-0.arrow"), b"x").unwrap();
        // A dead worker's directory: its marker is there but nobody holds its lock.
        let dead = parent.path().join("worker-1-0");
        fs::create_dir_all(dead.join("blocks")).unwrap();
        fs::write(
            dead.join(MARKER),
            format!("{SIGNATURE}\nname=worker-1-0\npid=1\n"),
        )
        .unwrap();
        fs::write(dead.join("blocks/block-7.arrow"), b"old").unwrap();
        // Directories that only look like a worker's, and one that is not named so.
        let user = parent.path().join("worker-reports");
        fs::create_dir(&user).unwrap();
        fs::write(user.join("q3.csv"), b"a user's file").unwrap();
        let copied = parent.path().join("worker-2-0");
        fs::create_dir(&copied).unwrap();
        fs::write(
            copied.join(MARKER),
            format!("{SIGNATURE}\nname=worker-1-0\npid=1\n"),
        )
        .unwrap();
        let unsigned = parent.path().join("worker-3-0");
        fs::create_dir(&unsigned).unwrap();
        fs::write(unsigned.join(MARKER), b"").unwrap();
        let other = parent.path().join("not-a-worker");
        fs::create_dir(&other).unwrap();

        let second = WorkDir::create(parent.path()).unwrap();
        assert!(!dead.exists(), "the abandoned directory is still there");
        assert!(
            live.blocks().join("block-0.arrow").exists(),
            "a live worker's file was removed"
        );
        for kept in [&user, &copied, &unsigned, &other] {
            assert!(kept.exists(), "{} was removed", kept.display());
        }
        assert!(user.join("q3.csv").exists());

        let (live_path, second_path) = (live.path().to_path_buf(), second.path().to_path_buf());
        drop(live);
        drop(second);
        assert!(!live_path.exists() && !second_path.exists());
    }
}
