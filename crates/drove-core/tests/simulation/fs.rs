//! Deterministic simulation of drove fs's replica decisions ([`Replicas`], [`place`])
//! against a world of workers whose disks are the truth: workers die (keeping their
//! disks) and come back, start and stop draining, fill up, lose replicas to
//! corruption; files are written and removed; copies the coordinator asks for get
//! lost, and those that arrive may find their source gone. After every step:
//!
//! - every replica the decisions count is on that worker's disk;
//! - no copy goes to a worker that holds the chunk, is draining or is dead;
//! - no trim takes a chunk below its factor, nor removes its last replica;
//! - a draining worker is let go only when each of its chunks is elsewhere.
//!
//! Then a fault-free phase with every worker back must bring every chunk to its factor.
//!
//! `DROVE_SIM_SEEDS=N` runs seeds 0..N (200 by default); `DROVE_SIM_SEED=S` replays one.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use drove_core::WorkerId;
use drove_core::fs::{
    COPY_TIMEOUT_MS, ChunkMeta, FileMeta, FsCommand, Holder, Namespace, Replicas, place,
};
use drove_core::rng::SplitMix64;

struct Worker {
    zone: String,
    alive: bool,
    draining: bool,
    full: bool,
    disk: BTreeSet<u64>,
}

struct World {
    rng: SplitMix64,
    now_ms: u64,
    workers: BTreeMap<WorkerId, Worker>,
    ns: Namespace,
    replicas: Replicas,
    /// Copies asked for and not yet done: (chunk, from, to).
    in_flight: Vec<(u64, WorkerId, WorkerId)>,
    next_chunk: u64,
    files: u64,
    copies: u64,
    lost_copies: u64,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = SplitMix64(seed);
        let n = rng.range(3, 6);
        let zones = rng.range(1, 3);
        let workers = (1..=n)
            .map(|i| {
                let w = Worker {
                    zone: format!("z{}", i % zones),
                    alive: true,
                    draining: false,
                    full: false,
                    disk: BTreeSet::new(),
                };
                (WorkerId(i), w)
            })
            .collect();
        Self {
            rng,
            now_ms: 0,
            workers,
            ns: Namespace::default(),
            replicas: Replicas::default(),
            in_flight: Vec::new(),
            next_chunk: 1,
            files: 0,
            copies: 0,
            lost_copies: 0,
        }
    }

    fn holders(&self) -> Vec<Holder> {
        (self.workers.iter())
            .filter(|(_, w)| w.alive)
            .map(|(id, w)| Holder {
                worker: *id,
                zone: w.zone.clone(),
                draining: w.draining,
            })
            .collect()
    }

    fn write_file(&mut self) {
        let factor = self.rng.range(1, 3) as u32;
        let chunks = self.rng.range(1, 4);
        let holders = self.holders();
        let mut meta = Vec::new();
        for _ in 0..chunks {
            let id = self.next_chunk;
            self.next_chunk += 1;
            let targets = place(
                id,
                factor as usize,
                &holders,
                &self.replicas.load(),
                &BTreeSet::new(),
            );
            let stored: Vec<WorkerId> = (targets.into_iter())
                .filter(|t| !self.workers[t].full)
                .collect();
            if stored.is_empty() {
                return; // The put fails; nothing is committed.
            }
            for t in &stored {
                self.workers.get_mut(t).unwrap().disk.insert(id);
                self.replicas.held(*t, [id]);
            }
            meta.push(ChunkMeta {
                id,
                len: 1,
                crc32c: 0,
            });
        }
        self.files += 1;
        let path = format!("f{}", self.files);
        let file = FileMeta {
            size: meta.len() as u64,
            chunk_bytes: 1,
            replication: factor,
            created_ms: self.now_ms,
            chunks: meta,
        };
        let freed = self.ns.apply(&FsCommand::Commit { path, file });
        assert!(freed.is_empty());
    }

    fn remove_file(&mut self) {
        let paths: Vec<String> = self
            .ns
            .files_under("")
            .iter()
            .map(|(p, _)| p.to_string())
            .collect();
        if paths.is_empty() {
            return;
        }
        let path = paths[self.rng.below(paths.len() as u64) as usize].clone();
        for chunk in self.ns.apply(&FsCommand::Remove { path }) {
            for w in self.replicas.forget(chunk) {
                self.workers.get_mut(&w).unwrap().disk.remove(&chunk);
            }
        }
    }

    fn pick(&mut self, alive: bool) -> Option<WorkerId> {
        let ids: Vec<WorkerId> = (self.workers.iter())
            .filter(|(_, w)| w.alive == alive)
            .map(|(id, _)| *id)
            .collect();
        (!ids.is_empty()).then(|| ids[self.rng.below(ids.len() as u64) as usize])
    }

    fn fault(&mut self) {
        match self.rng.below(5) {
            0 => {
                if self.workers.values().filter(|w| w.alive).count() > 1
                    && let Some(w) = self.pick(true)
                {
                    self.workers.get_mut(&w).unwrap().alive = false;
                    self.replicas.lost(w);
                }
            }
            1 => {
                if let Some(w) = self.pick(false) {
                    let worker = self.workers.get_mut(&w).unwrap();
                    worker.alive = true;
                    worker.draining = false;
                    let disk: Vec<u64> = worker.disk.iter().copied().collect();
                    self.replicas.held(w, disk);
                }
            }
            2 => {
                if let Some(w) = self.pick(true) {
                    let worker = self.workers.get_mut(&w).unwrap();
                    if let Some(&chunk) = worker.disk.iter().next() {
                        worker.disk.remove(&chunk);
                        self.replicas.dropped(w, chunk);
                    }
                }
            }
            3 => {
                if let Some(w) = self.pick(true) {
                    let worker = self.workers.get_mut(&w).unwrap();
                    worker.draining = !worker.draining;
                }
            }
            _ => {
                if let Some(w) = self.pick(true) {
                    let worker = self.workers.get_mut(&w).unwrap();
                    worker.full = !worker.full;
                }
            }
        }
    }

    /// The coordinator's tick: copies, then trims; `faults` loses some copies.
    fn tick(&mut self, faults: bool) {
        self.now_ms += 1_000;
        let holders = self.holders();
        // Copies asked for earlier arrive now, unless lost or their ends are gone.
        for (chunk, from, to) in std::mem::take(&mut self.in_flight) {
            let lost = faults && self.rng.chance(0.2);
            let source = self.workers[&from].alive && self.workers[&from].disk.contains(&chunk);
            let target = &self.workers[&to];
            if lost || !target.alive {
                self.lost_copies += 1;
                continue;
            }
            if !source || target.full {
                // The target tries, fails, and says so in its next heartbeat.
                self.lost_copies += 1;
                self.replicas.copy_failed(to, chunk, self.now_ms);
                continue;
            }
            self.workers.get_mut(&to).unwrap().disk.insert(chunk);
            self.replicas.held(to, [chunk]);
        }
        for copy in self.replicas.repairs(&self.ns, &holders, 4, self.now_ms) {
            let to = &self.workers[&copy.to];
            assert!(
                to.alive && !to.draining,
                "a copy to a dead or draining worker: {copy:?}"
            );
            assert!(
                !to.disk.contains(&copy.chunk.id),
                "a copy to a holder: {copy:?}"
            );
            self.copies += 1;
            self.in_flight.push((copy.chunk.id, copy.from, copy.to));
        }
        let live: BTreeSet<WorkerId> = (holders.iter())
            .filter(|h| !h.draining)
            .map(|h| h.worker)
            .collect();
        let factors: HashMap<u64, u32> = self.ns.chunks().map(|(c, f)| (c.id, f)).collect();
        let drops = self.replicas.surplus(&self.ns, &holders);
        for (w, chunk) in &drops {
            self.replicas.dropped(*w, *chunk);
            self.workers.get_mut(w).unwrap().disk.remove(chunk);
        }
        for (_, chunk) in &drops {
            let left = self
                .replicas
                .holders(*chunk)
                .filter(|w| live.contains(w))
                .count();
            assert!(
                left >= factors[chunk] as usize,
                "a trim left chunk {chunk} with {left}"
            );
        }
    }

    fn check(&self) {
        for (chunk, _) in self.ns.chunks() {
            for w in self.replicas.holders(chunk.id) {
                let worker = &self.workers[&w];
                assert!(
                    worker.alive,
                    "chunk {} counted on dead worker {w}",
                    chunk.id
                );
                assert!(
                    worker.disk.contains(&chunk.id),
                    "chunk {} counted on {w}, not on its disk",
                    chunk.id
                );
            }
        }
        let holders = self.holders();
        for h in holders.iter().filter(|h| h.draining) {
            if self.replicas.handed_off(h.worker, &self.ns, &holders) {
                let live = holders.iter().filter(|o| !o.draining).count();
                for chunk in &self.workers[&h.worker].disk {
                    let Some((_, factor)) = self.ns.chunks().find(|(c, _)| c.id == *chunk) else {
                        continue;
                    };
                    let elsewhere = (self.replicas.holders(*chunk))
                        .filter(|w| *w != h.worker && !self.workers[w].draining)
                        .count();
                    assert!(
                        elsewhere >= (factor as usize).min(live),
                        "{} let go holding {chunk}",
                        h.worker
                    );
                }
            }
        }
    }

    fn run(mut self) -> (u64, u64, u64) {
        for _ in 0..300 {
            match self.rng.below(10) {
                0..=2 => self.write_file(),
                3 => self.remove_file(),
                4..=5 => self.fault(),
                _ => self.tick(true),
            }
            self.check();
        }
        // Fault-free: every worker back, none draining or full.
        for (id, w) in self.workers.iter_mut() {
            w.draining = false;
            w.full = false;
            if !w.alive {
                w.alive = true;
                let disk: Vec<u64> = w.disk.iter().copied().collect();
                self.replicas.held(*id, disk);
            }
        }
        let settle = 20 + 2 * COPY_TIMEOUT_MS / 1_000;
        for _ in 0..settle {
            self.tick(false);
            self.check();
        }
        let holders = self.holders();
        // Chunks whose every replica was lost stay lost; every other one is repaired.
        let (under, missing) = self.replicas.under_replicated(&self.ns, &holders);
        assert_eq!(under, missing, "not repaired after {settle} ticks");
        for (chunk, factor) in self.ns.chunks() {
            let n = self.replicas.holders(chunk.id).count();
            if n > 0 {
                assert_eq!(
                    n,
                    (factor as usize).min(holders.len()),
                    "chunk {} has {n} replicas",
                    chunk.id
                );
            }
        }
        (self.files, self.copies, self.lost_copies)
    }
}

#[test]
fn replicas_converge_through_deaths_corruption_drains_and_lost_copies() {
    let seeds = super::seeds();
    let (mut files, mut copies, mut lost) = (0, 0, 0);
    for &seed in &seeds {
        let result = std::panic::catch_unwind(|| World::new(seed).run());
        match result {
            Ok((f, c, l)) => {
                files += f;
                copies += c;
                lost += l;
            }
            Err(panic) => {
                eprintln!("fs simulation seed {seed} failed; replay it with DROVE_SIM_SEED={seed}");
                std::panic::resume_unwind(panic)
            }
        }
    }
    eprintln!(
        "{} seeds: {files} files, {copies} copies asked, {lost} lost on the way",
        seeds.len()
    );
    assert!(
        files > 0 && copies > 0,
        "the seeds must write files and repair them"
    );
    if seeds.len() >= 50 {
        assert!(lost > 0, "some copies must be lost");
    }
}
