//! The cluster's recent past for the overview's charts: one sample a second of slots
//! busy, memory held, spill and shuffle traffic, for the last minutes, in a ring of
//! fixed size.

use std::collections::{BTreeMap, VecDeque};

use crate::rest::ClusterSample;

/// How often a sample is kept, at most.
pub const SAMPLE_INTERVAL_MS: u64 = 1_000;

/// How many samples are kept: five minutes of them.
pub const SAMPLES_KEPT: usize = 300;

/// What the cluster is at one moment.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    /// On a monotonic clock, which spaces the samples and times the rates.
    pub at_ms: u64,
    /// The wall clock, which labels them.
    pub unix_ms: u64,
    pub slots: u32,
    pub slots_busy: u32,
    pub memory_bytes: u64,
    pub spill_disk_bytes: u64,
    /// Bytes each registered worker has spilled since it started.
    pub spilled_by_worker: BTreeMap<u64, u64>,
    /// Shuffle bytes written and read remotely since the coordinator started.
    pub shuffle_bytes_total: u64,
}

/// The last [`SAMPLES_KEPT`] samples, oldest first.
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<ClusterSample>,
    last: Option<Reading>,
}

impl History {
    /// Keeps a sample of `now` unless the last was kept less than a sample interval
    /// ago (less a quarter, so that ticks a little early are not skipped). Rates are
    /// over the time since the last sample; spill counts only for workers present at
    /// both (one that registers again starts its count anew).
    pub fn record(&mut self, now: Reading) {
        let elapsed_ms = match &self.last {
            Some(last) if now.at_ms < last.at_ms + SAMPLE_INTERVAL_MS * 3 / 4 => return,
            Some(last) => now.at_ms - last.at_ms,
            None => 0,
        };
        let rate = |bytes: u64| bytes.saturating_mul(1000) / elapsed_ms.max(1);
        let (spilled, shuffled) = match &self.last {
            Some(last) => (
                now.spilled_by_worker
                    .iter()
                    .filter_map(|(w, total)| {
                        Some(total.saturating_sub(*last.spilled_by_worker.get(w)?))
                    })
                    .sum(),
                now.shuffle_bytes_total
                    .saturating_sub(last.shuffle_bytes_total),
            ),
            None => (0, 0),
        };
        let sample = ClusterSample {
            unix_ms: now.unix_ms,
            slots: now.slots,
            slots_busy: now.slots_busy,
            memory_bytes: now.memory_bytes,
            spill_disk_bytes: now.spill_disk_bytes,
            spilled_bytes_per_second: rate(spilled),
            shuffle_bytes_per_second: rate(shuffled),
        };
        if self.samples.len() == SAMPLES_KEPT {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        self.last = Some(now);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<ClusterSample> {
        self.samples.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at_ms: u64, shuffle_bytes_total: u64) -> Reading {
        Reading {
            at_ms,
            unix_ms: 1_700_000_000_000 + at_ms,
            slots: 4,
            slots_busy: 2,
            shuffle_bytes_total,
            ..Default::default()
        }
    }

    #[test]
    fn one_sample_a_second_with_rates_between_them() {
        let mut h = History::default();
        h.record(at(10_000, 0));
        h.record(at(10_400, 999)); // too soon: dropped
        h.record(at(12_000, 4_000));
        h.record(at(12_950, 5_900)); // a tick a little early still counts
        let s = h.samples();
        assert_eq!(s.len(), 3);
        let rates: Vec<u64> = s.iter().map(|s| s.shuffle_bytes_per_second).collect();
        assert_eq!(rates, [0, 2_000, 2_000]);
    }

    #[test]
    fn a_worker_that_registers_again_adds_no_spill_spike() {
        let mut h = History::default();
        let spilled = |at_ms: u64, workers: &[(u64, u64)]| Reading {
            at_ms,
            spilled_by_worker: workers.iter().copied().collect(),
            ..Default::default()
        };
        h.record(spilled(0, &[(1, 100), (2, 5_000)]));
        h.record(spilled(1_000, &[(1, 600)])); // worker 2 left
        h.record(spilled(2_000, &[(1, 600), (3, 9_000_000)])); // back as worker 3
        h.record(spilled(3_000, &[(1, 600), (3, 9_001_000)]));
        let rates: Vec<u64> = h
            .samples()
            .iter()
            .map(|s| s.spilled_bytes_per_second)
            .collect();
        assert_eq!(rates, [0, 500, 0, 1_000]);
    }

    #[test]
    fn it_keeps_the_last_minutes_only() {
        let mut h = History::default();
        for i in 0..(SAMPLES_KEPT as u64 + 50) {
            h.record(at(i * SAMPLE_INTERVAL_MS, 0));
        }
        let s = h.samples();
        assert_eq!(s.len(), SAMPLES_KEPT);
        assert_eq!(s[0].unix_ms, at(50 * SAMPLE_INTERVAL_MS, 0).unix_ms);
    }
}
