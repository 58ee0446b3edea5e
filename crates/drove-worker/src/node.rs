//! A worker's lasting identity (`--data-dir`): a node id made on its first start and
//! read back on every later one, unlike the worker id a coordinator gives each of its
//! sessions. The block store will recognise the replicas a returning node brings back
//! by it.
//!
//! Files in the directory: `node-id` (the id, written to a temporary file, fsync'd and
//! renamed into place, so it is whole or absent) and `LOCK`, locked while a worker uses
//! the directory, so two workers cannot take the same identity.

use std::fs::File;
use std::io::Write;
use std::path::Path;

const NODE_ID: &str = "node-id";

/// A worker's data directory, locked while it is open.
#[derive(Debug)]
pub struct NodeDir {
    pub node_id: String,
    _lock: File,
}

impl NodeDir {
    /// Opens (creating if needed) `dir` and reads its node id, making one on first use.
    pub fn open(dir: &Path) -> Result<Self, String> {
        let lock = drove_exec::datadir::lock(dir, "worker")?;
        let fail = |what: &str, path: &Path, e: std::io::Error| {
            format!(
                "cannot {what} {}: {e}; pass --data-dir a directory this user can write",
                path.display()
            )
        };
        let path = dir.join(NODE_ID);
        let node_id = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let id = text.trim();
                if !valid(id) {
                    return Err(format!(
                        "{} does not hold a node id (it holds {:?}); restore it, or remove it to give this worker a new identity",
                        path.display(),
                        text.chars().take(40).collect::<String>()
                    ));
                }
                id.to_string()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = format!("node-{:016x}", drove_core::ids::random_id());
                let tmp = dir.join(format!("{NODE_ID}.tmp"));
                File::create(&tmp)
                    .and_then(|mut f| {
                        f.write_all(format!("{id}\n").as_bytes())?;
                        f.sync_all()
                    })
                    .and_then(|()| std::fs::rename(&tmp, &path))
                    .and_then(|()| File::open(dir)?.sync_all())
                    .map_err(|e| fail("write", &path, e))?;
                id
            }
            Err(e) => return Err(fail("read", &path, e)),
        };
        Ok(NodeDir {
            node_id,
            _lock: lock,
        })
    }
}

fn valid(id: &str) -> bool {
    id.strip_prefix("node-")
        .is_some_and(|hex| hex.len() == 16 && hex.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_keeps_its_id_and_one_directory_serves_one_worker() {
        let dir = tempfile::tempdir().unwrap();
        let first = NodeDir::open(dir.path()).unwrap();
        assert!(valid(&first.node_id), "{}", first.node_id);
        let err = NodeDir::open(dir.path()).unwrap_err();
        assert!(err.contains("in use by another worker"), "{err}");
        let id = first.node_id.clone();
        drop(first);
        assert_eq!(NodeDir::open(dir.path()).unwrap().node_id, id);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(NodeDir::open(other.path()).unwrap().node_id, id);
    }

    #[test]
    fn a_damaged_id_or_an_unusable_directory_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(NODE_ID), "garbage").unwrap();
        let err = NodeDir::open(dir.path()).unwrap_err();
        assert!(err.contains("does not hold a node id"), "{err}");
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        let err = NodeDir::open(&file).unwrap_err();
        assert!(err.contains("--data-dir"), "{err}");
    }
}
