//! Where a cluster may read and write data (`--allow-path`): every way a job names a
//! file (a registered table, `CREATE EXTERNAL TABLE`, a submitted plan, MapReduce
//! input and output) is checked against the directories an admin allows, before
//! anything opens it. Paths are compared after symbolic links and `..` are resolved,
//! so a link inside an allowed directory does not lead out of it.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::ExecutionPlan;

use crate::mapreduce::nodes::{ReduceExec, TextSourceExec};

/// Directories allowed, at most.
pub const ROOTS_MAX: usize = 64;

/// The directories data may be read from and written to, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedPaths {
    roots: Vec<PathBuf>,
}

impl AllowedPaths {
    /// Allows `roots` (existing directories) and everything under them.
    pub fn new(roots: &[PathBuf]) -> Result<Self, String> {
        if roots.is_empty() || roots.len() > ROOTS_MAX {
            return Err(format!(
                "--allow-path is given {} times; give it 1 to {ROOTS_MAX} directories",
                roots.len()
            ));
        }
        let roots = (roots.iter())
            .map(|r| {
                let resolved = std::fs::canonicalize(r).map_err(|e| {
                    format!(
                        "--allow-path '{}' cannot be resolved: {e}; give an existing directory",
                        r.display()
                    )
                })?;
                if !resolved.is_dir() {
                    return Err(format!(
                        "--allow-path '{}' is not a directory; allow the directory that holds the data",
                        r.display()
                    ));
                }
                Ok(resolved)
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self { roots })
    }

    /// The directories allowed.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Refuses `path` (a local path or `file://` URL) unless it lies in an allowed
    /// directory. A path that does not exist yet (an output) is judged by the
    /// directory it would be made in.
    pub fn check(&self, path: &str) -> Result<(), String> {
        let refuse = |why: &str| {
            format!(
                "'{path}' {why}; this cluster reads and writes only under {} (--allow-path, or --tenant-path for a tenant)",
                self.list()
            )
        };
        let local = match path.split_once("://") {
            None => path,
            Some(("file", rest)) => rest,
            Some(_) => return Err(refuse("is not a local path")),
        };
        let resolved = resolve(Path::new(local)).map_err(|e| refuse(&e))?;
        if self.roots.iter().any(|root| resolved.starts_with(root)) {
            Ok(())
        } else {
            Err(refuse(&format!(
                "is outside the allowed directories (it is {})",
                resolved.display()
            )))
        }
    }

    fn list(&self) -> String {
        (self.roots.iter())
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `path` with links and `..` resolved; for a path that does not exist, its nearest
/// existing ancestor resolved, then the rest, which may hold no `..`.
fn resolve(path: &Path) -> Result<PathBuf, String> {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(existing) {
            Ok(resolved) => {
                let mut resolved = resolved;
                for part in rest.iter().rev() {
                    resolved.push(part);
                }
                return Ok(resolved);
            }
            Err(_) => {
                let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
                    return Err("cannot be resolved".into());
                };
                rest.push(name.to_os_string());
                existing = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                if existing.components().any(|c| c == Component::ParentDir)
                    && std::fs::canonicalize(existing).is_err()
                {
                    return Err("names a directory through '..' that does not exist".into());
                }
            }
        }
    }
}

/// Every file or directory `plan` reads or writes: files its scans read (as the
/// planner listed them), MapReduce inputs and outputs.
/// Every file and directory `plan` reads or writes, as a local path or a URL.
pub fn named_paths(plan: &Arc<dyn ExecutionPlan>) -> Vec<String> {
    let mut paths = Vec::new();
    collect_paths(plan, &mut paths);
    paths
}

fn collect_paths(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<String>) {
    if let Some(scan) = plan
        .downcast_ref::<DataSourceExec>()
        .and_then(|scan| scan.data_source().downcast_ref::<FileScanConfig>())
    {
        let store = scan.object_store_url.as_str();
        for file in scan.file_groups.iter().flat_map(|group| group.iter()) {
            let location = file.object_meta.location.as_ref();
            out.push(if store.starts_with("file://") {
                format!("/{location}")
            } else {
                format!("{store}{location}")
            });
        }
    }
    if let Some(text) = plan.downcast_ref::<TextSourceExec>() {
        out.extend(text.files().iter().cloned());
    }
    if let Some(reduce) = plan.downcast_ref::<ReduceExec>() {
        out.push(reduce.output().dir.clone());
    }
    for child in plan.children() {
        collect_paths(child, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_pass_and_outside_links_and_dotdot_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("t.csv"), "a\n1\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", data.join("link.csv")).unwrap();
        let allowed = AllowedPaths::new(std::slice::from_ref(&data)).unwrap();

        let inside = data.join("t.csv").display().to_string();
        assert!(allowed.check(&inside).is_ok());
        assert!(allowed.check(&format!("file://{inside}")).is_ok());
        // Not there yet: an output directory inside, however deep.
        assert!(
            allowed
                .check(&data.join("out/part").display().to_string())
                .is_ok()
        );

        for outside in [
            "/etc/shadow".to_string(),
            data.join("link.csv").display().to_string(),
            data.join("../escape.csv").display().to_string(),
            format!("{}/../../etc/passwd", data.display()),
            data.join("missing/../../x").display().to_string(),
            "s3://bucket/key".to_string(),
            "relative.csv".to_string(),
        ] {
            let e = allowed.check(&outside).unwrap_err();
            assert!(e.contains("--allow-path"), "{outside}: {e}");
        }
    }

    #[test]
    fn bad_allow_lists_are_refused_with_the_fix() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("f");
        std::fs::write(&file, "").unwrap();
        let e = AllowedPaths::new(&[]).unwrap_err();
        assert!(e.contains("1 to 64"), "{e}");
        let e = AllowedPaths::new(&[root.path().join("nope")]).unwrap_err();
        assert!(e.contains("existing directory"), "{e}");
        let e = AllowedPaths::new(&[file]).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
    }
}
