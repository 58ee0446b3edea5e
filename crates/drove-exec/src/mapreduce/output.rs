//! Where a MapReduce job's output goes, and how a run commits it there.
//!
//! Reduce tasks write part files under `OUTPUT/_temporary/TOKEN/`, one per attempt.
//! Only when the whole job has succeeded does the submitter publish the winning
//! attempts' files as `OUTPUT/part-r-NNNNN` with an `OUTPUT/_SUCCESS` marker; a
//! failed run's temporary files are removed. How the publishing is done depends on
//! the place:
//! - a local directory: each part is renamed into place, then `_SUCCESS` is written;
//! - `drove://`: one namespace rename removes the earlier output's parts and moves the
//!   new ones and `_SUCCESS` in, so a reader sees the old output or the new, whole;
//! - an object store (`s3://`), which cannot rename: the earlier `_SUCCESS` is deleted
//!   first, the parts are copied into place, and `_SUCCESS` is written last. Without
//!   it an output is incomplete.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::execution::runtime_env::RuntimeEnv;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use url::Url;

use super::nodes::OutputFormat;
use crate::dfs::Namespace;
use crate::dfs_write::{FsWriter, PutOptions};
use crate::stores;
use crate::{Error, Result};

/// Marks an output that a run committed whole.
pub const SUCCESS_MARKER: &str = "_SUCCESS";
/// How committed part files are named: `part-r-00000` and on.
pub const PART_PREFIX: &str = "part-r-";
/// Chunks of part files in drove fs: a put holds up to three in memory, outside the
/// reduce task's memory budget, so they are smaller than files' usual chunks.
const PART_CHUNK_BYTES: u64 = 16 << 20;
/// The directory under an output that holds runs' part files until they commit.
const TEMPORARY: &str = "_temporary";

/// What is at an output location before a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Absent,
    /// A file, not a directory.
    File,
    Empty,
    /// An earlier run's committed output (it has `_SUCCESS`).
    Output,
    /// A directory of something else.
    Other,
}

/// An output directory: local, in drove fs, or in an object store.
#[derive(Debug, Clone)]
pub enum OutputDir {
    Local(PathBuf),
    Drove {
        /// The normalized drove fs path.
        path: String,
        writer: FsWriter,
    },
    Object {
        url: Url,
        store: Arc<dyn ObjectStore>,
        location: object_store::path::Path,
    },
}

/// The object store location `parts` below `location`.
fn under(location: &object_store::path::Path, parts: &[&str]) -> object_store::path::Path {
    parts
        .iter()
        .fold(location.clone(), |path, part| path.join(*part))
}

/// What a directory holding `names` is, runs' temporary directories aside: only
/// `_SUCCESS` marks an earlier output (a user's own file may be named like a part).
fn classify(names: Vec<String>) -> Existing {
    let names: Vec<String> = names.into_iter().filter(|n| n != TEMPORARY).collect();
    if names.is_empty() {
        Existing::Empty
    } else if names.iter().any(|n| n == SUCCESS_MARKER) {
        Existing::Output
    } else {
        Existing::Other
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::User(format!("{what} failed: {e}"))
}

impl OutputDir {
    /// The output at `dir`: a local path, a `drove://` path (written through
    /// `writer`, which a process outside a cluster lacks) or an object store's URL
    /// (reached through `runtime`'s stores).
    pub fn open(dir: &str, runtime: &RuntimeEnv, writer: Option<&FsWriter>) -> Result<Self> {
        let Some(url) = stores::url_of(dir).map_err(Error::User)? else {
            return Ok(Self::Local(PathBuf::from(dir)));
        };
        if url.scheme() == stores::SCHEME {
            let path = drove_core::fs::normalize(dir).map_err(Error::User)?;
            let writer = writer.cloned().ok_or_else(|| {
                Error::User(format!(
                    "{dir}: drove:// output is written through a cluster; connect to one"
                ))
            })?;
            return Ok(Self::Drove { path, writer });
        }
        let (store, location) = stores::locate(runtime.object_store_registry.as_ref(), &url)?;
        Ok(Self::Object {
            url,
            store,
            location,
        })
    }

    /// The output's name, as the user wrote it.
    pub fn name(&self) -> String {
        match self {
            Self::Local(dir) => dir.display().to_string(),
            Self::Drove { path, .. } => format!("drove://{path}"),
            Self::Object { url, .. } => url.to_string(),
        }
    }

    /// A path or URL below the output.
    fn child(&self, parts: &[&str]) -> String {
        let mut name = self.name().trim_end_matches('/').to_string();
        for part in parts {
            name.push('/');
            name.push_str(part);
        }
        name
    }

    fn temporary(&self, token: &str) -> String {
        self.child(&[TEMPORARY, token])
    }

    /// What is there now.
    pub async fn existing(&self) -> Result<Existing> {
        Ok(match self {
            Self::Local(dir) if !dir.exists() => Existing::Absent,
            Self::Local(dir) if !dir.is_dir() => Existing::File,
            Self::Local(dir) => {
                let entries = std::fs::read_dir(dir)
                    .map_err(|e| failed(&format!("reading '{}'", dir.display()), e))?;
                classify(
                    entries
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect(),
                )
            }
            Self::Drove { path, writer } => match writer.coordinators.list(path).await {
                Ok(None) => Existing::Absent,
                Ok(Some(listed)) if !listed.is_dir => Existing::File,
                Ok(Some(listed)) => classify(listed.entries.into_iter().map(|e| e.name).collect()),
                Err(e) => return Err(failed(&format!("listing drove://{path}"), e)),
            },
            Self::Object {
                url,
                store,
                location,
            } => match stores::find(store.as_ref(), location).await {
                Ok(None) => Existing::Absent,
                Ok(Some(stores::Found::File(_))) => Existing::File,
                Ok(Some(stores::Found::Dir { objects, dirs })) => classify(
                    (objects.iter().map(|o| &o.location))
                        .chain(&dirs)
                        .filter_map(|p| p.filename().map(str::to_string))
                        .collect(),
                ),
                Err(e) => return Err(failed(&format!("listing {url}"), e)),
            },
        })
    }

    /// Prepares the run's temporary directory before any task runs, so an output
    /// nobody can write is refused early. Reduce tasks write only while it is there
    /// ([`Self::staged`]).
    pub async fn stage(&self, token: &str) -> Result<()> {
        let temporary = self.temporary(token);
        match self {
            Self::Local(_) => std::fs::create_dir_all(&temporary).map_err(|e| {
                Error::User(format!(
                    "cannot write the output directory '{}': {e}; choose an --output this user can write",
                    self.name()
                ))
            }),
            Self::Drove { writer, .. } => {
                // An empty marker, moved into place with the parts at the commit.
                let marker = self.child(&[TEMPORARY, token, SUCCESS_MARKER]);
                (writer.put(std::io::empty(), "", &marker, &PutOptions::default()).await)
                    .map_err(|e| failed(&format!("writing {marker}"), e))?;
                Ok(())
            }
            Self::Object {
                store, location, ..
            } => {
                let marker = under(location, &[TEMPORARY, token, SUCCESS_MARKER]);
                (store.put(&marker, Vec::<u8>::new().into()).await)
                    .map_err(|e| failed(&format!("writing {temporary}/{SUCCESS_MARKER}"), e))?;
                Ok(())
            }
        }
    }

    /// Whether the run's temporary directory is still there: one that is gone was
    /// removed by a submitter that gave up.
    pub async fn staged(&self, token: &str) -> Result<bool> {
        Ok(match self {
            Self::Local(_) => Path::new(&self.temporary(token)).is_dir(),
            Self::Drove { writer, .. } => {
                let marker = self.child(&[TEMPORARY, token, SUCCESS_MARKER]);
                (writer.coordinators.list(&marker).await)
                    .map_err(|e| failed(&format!("listing {marker}"), e))?
                    .is_some()
            }
            Self::Object {
                store, location, ..
            } => {
                let marker = under(location, &[TEMPORARY, token, SUCCESS_MARKER]);
                match store.head(&marker).await {
                    Ok(_) => true,
                    Err(object_store::Error::NotFound { .. }) => false,
                    Err(e) => {
                        return Err(failed(&format!("reading {}", self.temporary(token)), e));
                    }
                }
            }
        })
    }

    /// Where a task writes part file `name` itself: in a local output, in place;
    /// elsewhere nowhere (it writes a local file and [`Self::put_part`]s it).
    pub fn local_part(&self, token: &str, name: &str) -> Option<PathBuf> {
        match self {
            Self::Local(_) => Some(PathBuf::from(self.temporary(token)).join(name)),
            _ => None,
        }
    }

    /// Copies the local file `local` to part file `name` of the run; returns where.
    pub async fn put_part(&self, token: &str, name: &str, local: &Path) -> Result<String> {
        let target = self.child(&[TEMPORARY, token, name]);
        match self {
            Self::Local(_) => {
                std::fs::rename(local, &target)?;
            }
            Self::Drove { writer, .. } => {
                let options = PutOptions {
                    chunk_bytes: PART_CHUNK_BYTES,
                    overwrite: true,
                    ..PutOptions::default()
                };
                (writer.put_file(local, &target, &options).await)
                    .map_err(|e| failed(&format!("writing {target}"), e))?;
            }
            Self::Object {
                store, location, ..
            } => {
                let part = under(location, &[TEMPORARY, token, name]);
                stores::upload_to(store.as_ref(), &part, local).await?;
            }
        }
        Ok(target)
    }

    /// Publishes the run's winning part files, `written` as (partition, where the
    /// task wrote it), as `part-r-NNNNN` and marks the output complete. With
    /// `overwrite`, an earlier output's parts and marker are replaced. Returns the
    /// committed files, in order.
    pub async fn commit(
        &self,
        token: &str,
        written: &[(u64, String)],
        format: OutputFormat,
        overwrite: bool,
    ) -> Result<Vec<String>> {
        // Each part by its file name in the run's directory: a task names only where
        // it wrote inside it.
        let parts: Vec<(String, String)> = written
            .iter()
            .map(|(partition, at)| {
                let name = at.rsplit('/').next().unwrap_or(at).to_string();
                let target = format!("{PART_PREFIX}{partition:05}{}", format.extension());
                (name, target)
            })
            .collect();
        let files: Vec<String> = parts.iter().map(|(_, t)| self.child(&[t])).collect();
        let earlier = |name: &str| name.starts_with(PART_PREFIX) || name == SUCCESS_MARKER;
        match self {
            Self::Local(out) => {
                let committed: std::io::Result<()> = (|| {
                    if overwrite {
                        for entry in std::fs::read_dir(out)? {
                            let path = entry?.path();
                            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                            if earlier(name) {
                                std::fs::remove_file(&path)?;
                            }
                        }
                    }
                    let temporary = PathBuf::from(self.temporary(token));
                    for ((name, _), target) in parts.iter().zip(&files) {
                        std::fs::rename(temporary.join(name), target)?;
                    }
                    std::fs::write(out.join(SUCCESS_MARKER), b"")
                })();
                committed.map_err(|e| failed(&format!("committing to '{}'", out.display()), e))?;
            }
            Self::Drove { path, writer } => {
                // The earlier output's parts are named by their prefix, so the rename
                // removes those there when it applies, even ones another run
                // committed since this one looked.
                let (remove, remove_prefixed) = if overwrite {
                    (
                        vec![self.child(&[SUCCESS_MARKER])],
                        vec![self.child(&[PART_PREFIX])],
                    )
                } else {
                    (Vec::new(), Vec::new())
                };
                let mut moves: Vec<(String, String)> = (parts.iter().zip(&files))
                    .map(|((name, _), target)| {
                        (self.child(&[TEMPORARY, token, name]), target.clone())
                    })
                    .collect();
                moves.push((
                    self.child(&[TEMPORARY, token, SUCCESS_MARKER]),
                    self.child(&[SUCCESS_MARKER]),
                ));
                let marker = self.child(&[TEMPORARY, token, SUCCESS_MARKER]);
                if let Err(e) = writer.rename(&moves, &remove, &remove_prefixed).await {
                    // A rename retried after its first answer was lost (the leader
                    // changed) is refused, though the first was applied: the marker
                    // moved says so.
                    let listed = |p: String| async move {
                        matches!(writer.coordinators.list(&p).await, Ok(Some(_)))
                    };
                    let applied =
                        !listed(marker).await && listed(self.child(&[SUCCESS_MARKER])).await;
                    if !applied {
                        return Err(failed(&format!("committing to drove://{path}"), e));
                    }
                }
            }
            Self::Object {
                url,
                store,
                location,
            } => {
                let mut what = format!("committing to {url}");
                let earlier_parts: Vec<object_store::path::Path> = if overwrite {
                    // The marker goes first: from here on the output reads as
                    // incomplete until the new marker is written.
                    match store.delete(&under(location, &[SUCCESS_MARKER])).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(failed(&what, e)),
                    }
                    what.push_str(
                        " (the earlier output there has no _SUCCESS now and may be partly replaced: remove it, or choose another --output)",
                    );
                    let listed = (store.list_with_delimiter(Some(location)).await)
                        .map_err(|e| failed(&what, e))?;
                    (listed.objects.into_iter())
                        .map(|o| o.location)
                        .filter(|p| p.filename().is_some_and(earlier))
                        .collect()
                } else {
                    Vec::new()
                };
                // The new parts replace the earlier ones of the same names, then the
                // earlier ones beyond them go: a commit that fails midway leaves no
                // marker, and an output `--overwrite` may replace.
                let targets: Vec<object_store::path::Path> =
                    parts.iter().map(|(_, t)| under(location, &[t])).collect();
                for ((name, _), target) in parts.iter().zip(&targets) {
                    let from = under(location, &[TEMPORARY, token, name]);
                    store
                        .copy(&from, target)
                        .await
                        .map_err(|e| failed(&what, e))?;
                }
                for stale in earlier_parts.iter().filter(|p| !targets.contains(p)) {
                    store.delete(stale).await.map_err(|e| failed(&what, e))?;
                }
                (store
                    .put(&under(location, &[SUCCESS_MARKER]), Vec::<u8>::new().into())
                    .await)
                    .map_err(|e| failed(&what, e))?;
            }
        }
        self.discard(token, false).await;
        Ok(files)
    }

    /// [`Self::discard`] at once, without waiting, if the output is local; returns
    /// whether it was.
    pub fn discard_now(&self, token: &str, output: bool) -> bool {
        let Self::Local(dir) = self else {
            return false;
        };
        let _ = std::fs::remove_dir_all(self.temporary(token));
        let _ = std::fs::remove_dir(self.child(&[TEMPORARY]));
        if output {
            let _ = std::fs::remove_dir(dir);
        }
        true
    }

    /// Removes the run's temporary files (the losing attempts', or all of a failed
    /// run's), the temporary directory if no other run uses it, and with `output` the
    /// output directory if it is empty then. Best effort: what is left is named
    /// `_temporary` and never read as output.
    pub async fn discard(&self, token: &str, output: bool) {
        if self.discard_now(token, output) {
            return;
        }
        let temporary = self.temporary(token);
        match self {
            Self::Local(_) => {}
            Self::Drove { path, writer } => {
                let _ = writer.remove(&temporary, true).await;
                let _ = writer.remove(&self.child(&[TEMPORARY]), false).await;
                if output {
                    let _ = writer.remove(path, false).await;
                }
            }
            Self::Object {
                store, location, ..
            } => {
                let prefix = under(location, &[TEMPORARY, token]);
                let objects: Vec<_> = match store.list(Some(&prefix)).try_collect().await {
                    Ok(objects) => objects,
                    Err(_) => return,
                };
                for object in objects {
                    let _ = store.delete(&object.location).await;
                }
            }
        }
    }
}
