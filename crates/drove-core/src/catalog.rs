//! The catalog of cached tables (`CACHE TABLE name AS ...`): which names are cached or
//! being cached, where each table's partitions live, and what changes when a job that
//! computed some of them succeeds.
//!
//! Sans-I/O like the scheduler: the catalog decides, and answers with the messages
//! workers must get ([`CatalogCommand`]); the coordinator sends them. What a table
//! carries besides its partitions (its schema and lineage plans) is the caller's `T`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::scheduler::{Existing, Output};
use crate::{JobId, StageId, WorkerId};

/// A cached table.
#[derive(Debug, Clone)]
pub struct CachedEntry<T> {
    pub id: u64,
    pub name: String,
    /// The job that cached it.
    pub cached_by: JobId,
    /// Where its partitions are, one block each; [`WorkerId::NOWHERE`] for one that
    /// is lost and will be computed again from the lineage when next read.
    pub partitions: Vec<Output>,
    pub meta: T,
}

/// Why the catalog refused a request; the message names the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogError {
    BadName(String),
    Taken(String),
    StillCaching(String),
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CatalogError::BadName(name) => write!(
                f,
                "'{name}' cannot name a cached table; use letters, digits and '_', not starting with a digit"
            ),
            CatalogError::Taken(name) => write!(
                f,
                "table '{name}' is already cached (or being cached); UNCACHE TABLE {name} first to cache it anew"
            ),
            CatalogError::StillCaching(name) => write!(
                f,
                "table '{name}' is still being cached by a running job; wait for it to end, or cancel it (drove cancel JOB), then uncache"
            ),
        }
    }
}

impl std::error::Error for CatalogError {}

/// The table part of a name that may be qualified (`OWNER/TABLE`).
pub fn table_part(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// A message the catalog needs sent to a worker. Blocks are named by the partition
/// of the cached stage and the output that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogCommand {
    /// These blocks now belong to cached table `cache`: keep them past their job.
    /// If it cannot be delivered, report it with [`Catalog::adoption_failed`].
    Adopt {
        worker: WorkerId,
        cache: u64,
        blocks: Vec<(u32, Output)>,
    },
    /// These copies were replaced by new ones: free them.
    Drop {
        worker: WorkerId,
        blocks: Vec<(u32, Output)>,
    },
    /// The table was uncached: every worker frees its blocks.
    ReleaseCache { cache: u64 },
}

/// A stage of a job that writes a cached table's partitions, with what it produced.
#[derive(Debug, Clone)]
pub struct CachedStage {
    pub cache: u64,
    pub outputs: Vec<Output>,
}

/// The cached tables by name, and the names claimed by jobs that will cache them.
#[derive(Debug, Clone)]
pub struct Catalog<T> {
    tables: BTreeMap<String, CachedEntry<T>>,
    /// Claimed names, with the id each table will have.
    pending: BTreeMap<String, u64>,
    next_id: u64,
}

impl<T> Default for Catalog<T> {
    fn default() -> Self {
        Catalog {
            tables: BTreeMap::new(),
            pending: BTreeMap::new(),
            next_id: 1,
        }
    }
}

impl<T: Clone> Catalog<T> {
    /// Takes back a table cached before a restart, with its `partitions` all lost
    /// (written by stage `stage` of job `cached_by`): the first query that reads it
    /// computes them again from its lineage. Ids given later are above its id.
    pub fn restore(
        &mut self,
        name: &str,
        id: u64,
        cached_by: JobId,
        stage: crate::StageId,
        partitions: u32,
        meta: T,
    ) {
        let lost = Output {
            attempt: 0,
            worker: WorkerId::NOWHERE,
            origin: (cached_by, stage),
        };
        self.next_id = self.next_id.max(id + 1);
        self.tables.insert(
            name.to_string(),
            CachedEntry {
                id,
                name: name.to_string(),
                cached_by,
                partitions: vec![lost; partitions as usize],
                meta,
            },
        );
    }

    /// Claims `name` for a job about to cache a table under it, and numbers the table.
    /// The claim ends with [`Catalog::job_succeeded`] or [`Catalog::unclaim`]. A name
    /// may be qualified, `OWNER/TABLE`: owners' tables of one name are apart, and the
    /// table part is what must be a name (and what errors show).
    pub fn claim(&mut self, name: &str) -> Result<u64, CatalogError> {
        let table = table_part(name);
        let valid = !table.is_empty()
            && table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !table.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(CatalogError::BadName(table.to_string()));
        }
        if self.tables.contains_key(name) || self.pending.contains_key(name) {
            return Err(CatalogError::Taken(table.to_string()));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(name.to_string(), id);
        Ok(id)
    }

    /// Frees a claimed name: its job was not submitted, or ended without caching.
    pub fn unclaim(&mut self, name: &str) {
        self.pending.remove(name);
    }

    /// Forgets a cached table. `Ok(None)`: no table of that name is cached.
    pub fn uncache(&mut self, name: &str) -> Result<Option<CatalogCommand>, CatalogError> {
        if self.pending.contains_key(name) {
            return Err(CatalogError::StillCaching(table_part(name).to_string()));
        }
        Ok(self
            .tables
            .remove(name)
            .map(|e| CatalogCommand::ReleaseCache { cache: e.id }))
    }

    pub fn tables(&self) -> impl Iterator<Item = &CachedEntry<T>> {
        self.tables.values()
    }

    fn by_id_mut(&mut self, cache: u64) -> Option<&mut CachedEntry<T>> {
        self.tables.values_mut().find(|e| e.id == cache)
    }

    /// What of a stage exists before its job runs. `origin`: the stage belongs to the
    /// lineage of a cached table (its id, and the stage's id in the job that cached
    /// it); `writes`: the stage is the one whose outputs are the table's partitions.
    /// Such a stage starts with the partitions where they are; the other stages of
    /// the lineage exist nowhere, and run only if a lost partition needs them.
    pub fn existing(
        &self,
        origin: Option<(u64, StageId)>,
        writes: Option<u64>,
        tasks: u32,
    ) -> Vec<Existing> {
        let Some((cache, original)) = origin else {
            return Vec::new();
        };
        let entry = self.tables.values().find(|e| e.id == cache);
        match entry {
            Some(e) if writes == Some(cache) && e.partitions.len() == tasks as usize => e
                .partitions
                .iter()
                .map(|o| Existing {
                    attempt: o.attempt,
                    worker: o.worker,
                    origin: o.origin,
                })
                .collect(),
            _ => (0..tasks)
                .map(|_| Existing {
                    attempt: 0,
                    worker: WorkerId::NOWHERE,
                    origin: (JobId(0), original),
                })
                .collect(),
        }
    }

    /// A job succeeded. `new_table`: the table it cached (the name it claimed, and
    /// what the table carries); `stages`: its stages that wrote cached partitions.
    /// The new table becomes available; partitions of other tables that the job had
    /// to compute again replace the lost ones, and old copies that may live on are
    /// dropped. Either way the workers holding the partitions it computed adopt them.
    pub fn job_succeeded(
        &mut self,
        job: JobId,
        new_table: Option<(String, T)>,
        stages: Vec<CachedStage>,
    ) -> Vec<CatalogCommand> {
        let mut new_table = new_table.and_then(|(name, meta)| {
            let id = self.pending.remove(&name)?;
            Some((name, id, meta))
        });
        let mut out = Vec::new();
        for CachedStage { cache, outputs } in stages {
            let computed: Vec<(u32, Output)> = outputs
                .iter()
                .enumerate()
                .filter(|(_, o)| o.origin.0 == job)
                .map(|(p, o)| (p as u32, *o))
                .collect();
            match new_table.take_if(|(_, id, _)| *id == cache) {
                Some((name, id, meta)) => {
                    let entry = CachedEntry {
                        id,
                        name: name.clone(),
                        cached_by: job,
                        partitions: outputs,
                        meta,
                    };
                    self.tables.insert(name, entry);
                }
                None => {
                    // Uncached while this job ran: its blocks go with the job.
                    let Some(entry) = self.by_id_mut(cache) else {
                        continue;
                    };
                    let mut stale: BTreeMap<WorkerId, Vec<(u32, Output)>> = BTreeMap::new();
                    for &(p, o) in &computed {
                        let Some(old) = entry.partitions.get_mut(p as usize) else {
                            continue;
                        };
                        if old.worker != WorkerId::NOWHERE && *old != o {
                            stale.entry(old.worker).or_default().push((p, *old));
                        }
                        *old = o;
                    }
                    out.extend(
                        stale
                            .into_iter()
                            .map(|(worker, blocks)| CatalogCommand::Drop { worker, blocks }),
                    );
                }
            }
            let mut by_worker: BTreeMap<WorkerId, Vec<(u32, Output)>> = BTreeMap::new();
            for (p, o) in computed {
                by_worker.entry(o.worker).or_default().push((p, o));
            }
            out.extend(
                by_worker
                    .into_iter()
                    .map(|(worker, blocks)| CatalogCommand::Adopt {
                        worker,
                        cache,
                        blocks,
                    }),
            );
        }
        if let Some((name, _, _)) = new_table {
            // Its stage produced nothing to keep (it cannot happen for a job that
            // succeeded, but a claim must never outlive its job).
            self.pending.remove(&name);
        }
        out
    }

    /// An `Adopt` could not be delivered: its worker will free the blocks with their
    /// job, so the partitions it names count as lost (where the table still lists
    /// them).
    pub fn adoption_failed(&mut self, cache: u64, blocks: &[(u32, Output)]) {
        if let Some(entry) = self.by_id_mut(cache) {
            for (p, o) in blocks {
                if let Some(listed) = entry.partitions.get_mut(*p as usize)
                    && listed == o
                {
                    listed.worker = WorkerId::NOWHERE;
                }
            }
        }
    }

    /// The catalog's own invariants; panics naming the one broken.
    pub fn check_invariants(&self) {
        let mut ids = BTreeSet::new();
        for (name, e) in &self.tables {
            assert_eq!(name, &e.name, "catalog invariant 'names-agree' broken");
            assert!(
                !self.pending.contains_key(name),
                "catalog invariant 'cached-or-pending' broken: '{name}' is both"
            );
            assert!(
                ids.insert(e.id),
                "catalog invariant 'unique-ids' broken: {}",
                e.id
            );
        }
        for id in self.pending.values() {
            assert!(
                ids.insert(*id),
                "catalog invariant 'unique-ids' broken: {id}"
            );
        }
        assert!(
            ids.iter().all(|id| *id < self.next_id),
            "catalog invariant 'ids-below-next' broken"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(job: u64, stage: u32, worker: u64) -> Output {
        Output {
            attempt: 0,
            worker: WorkerId(worker),
            origin: (JobId(job), StageId(stage)),
        }
    }

    #[test]
    fn names_are_claimed_once_and_checked() {
        let mut c: Catalog<()> = Catalog::default();
        assert!(matches!(c.claim("1t"), Err(CatalogError::BadName(_))));
        assert!(matches!(c.claim("a-b"), Err(CatalogError::BadName(_))));
        let id = c.claim("t").unwrap();
        assert_eq!(c.claim("t"), Err(CatalogError::Taken("t".into())));
        assert_eq!(c.uncache("t"), Err(CatalogError::StillCaching("t".into())));
        let cmds = c.job_succeeded(
            JobId(1),
            Some(("t".into(), ())),
            vec![CachedStage {
                cache: id,
                outputs: vec![out(1, 2, 7), out(1, 2, 8)],
            }],
        );
        assert_eq!(cmds.len(), 2, "{cmds:?}");
        c.check_invariants();
        assert_eq!(c.claim("t"), Err(CatalogError::Taken("t".into())));
        assert_eq!(
            c.uncache("t"),
            Ok(Some(CatalogCommand::ReleaseCache { cache: id }))
        );
        assert_eq!(c.uncache("t"), Ok(None));
        assert!(c.claim("t").unwrap() > id, "ids are never reused");
    }

    #[test]
    fn a_recomputed_partition_replaces_the_old_copy_which_is_dropped() {
        let mut c: Catalog<()> = Catalog::default();
        let id = c.claim("t").unwrap();
        c.job_succeeded(
            JobId(1),
            Some(("t".into(), ())),
            vec![CachedStage {
                cache: id,
                outputs: vec![out(1, 2, 7), out(1, 2, 8)],
            }],
        );
        c.adoption_failed(id, &[(1, out(1, 2, 8))]);
        let existing = c.existing(Some((id, StageId(2))), Some(id), 2);
        assert_eq!(existing[1].worker, WorkerId::NOWHERE);
        // Job 5 recomputed partition 0 on worker 9 (its old copy on 7 was thought lost)
        // and partition 1; partition 1's old copy was nowhere, so nothing to drop.
        let cmds = c.job_succeeded(
            JobId(5),
            None,
            vec![CachedStage {
                cache: id,
                outputs: vec![out(5, 0, 9), out(5, 0, 9)],
            }],
        );
        assert_eq!(
            cmds,
            vec![
                CatalogCommand::Drop {
                    worker: WorkerId(7),
                    blocks: vec![(0, out(1, 2, 7))]
                },
                CatalogCommand::Adopt {
                    worker: WorkerId(9),
                    cache: id,
                    blocks: vec![(0, out(5, 0, 9)), (1, out(5, 0, 9))]
                },
            ]
        );
        let existing = c.existing(Some((id, StageId(2))), Some(id), 2);
        assert!(existing.iter().all(|e| e.worker == WorkerId(9)));
        // A lineage stage exists nowhere; a stage count that does not match reads as
        // lineage too.
        let lineage = c.existing(Some((id, StageId(1))), None, 3);
        assert!(lineage.iter().all(|e| e.worker == WorkerId::NOWHERE));
        assert!(c.existing(None, None, 3).is_empty());
    }
}
