//! The cluster's recent past for the overview's charts: one sample a second of slots
//! busy, memory held, spill and shuffle traffic, for the last minutes, in a ring of
//! fixed size.

use std::collections::VecDeque;

use crate::rest::ClusterSample;

/// How often a sample is kept, at most.
pub const SAMPLE_INTERVAL_MS: u64 = 1_000;

/// How many samples are kept: five minutes of them.
pub const SAMPLES_KEPT: usize = 300;

/// What the cluster is at one moment; the totals count since the coordinator started.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    pub unix_ms: u64,
    pub slots: u32,
    pub slots_busy: u32,
    pub memory_bytes: u64,
    pub spill_disk_bytes: u64,
    /// Bytes spilled so far by the registered workers (it drops when one leaves).
    pub spilled_bytes_total: u64,
    /// Shuffle bytes written and read remotely so far.
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
    /// ago. Rates are over the time since the last sample; a total that fell (a worker
    /// left with its counts) counts as no traffic.
    pub fn record(&mut self, now: Reading) {
        let elapsed_ms = match self.last {
            Some(last) if now.unix_ms < last.unix_ms + SAMPLE_INTERVAL_MS => return,
            Some(last) => now.unix_ms - last.unix_ms,
            None => 0,
        };
        let rate = |total: u64, before: Option<u64>| match before {
            Some(before) if elapsed_ms > 0 => total.saturating_sub(before) * 1000 / elapsed_ms,
            _ => 0,
        };
        let sample = ClusterSample {
            unix_ms: now.unix_ms,
            slots: now.slots,
            slots_busy: now.slots_busy,
            memory_bytes: now.memory_bytes,
            spill_disk_bytes: now.spill_disk_bytes,
            spilled_bytes_per_second: rate(
                now.spilled_bytes_total,
                self.last.map(|l| l.spilled_bytes_total),
            ),
            shuffle_bytes_per_second: rate(
                now.shuffle_bytes_total,
                self.last.map(|l| l.shuffle_bytes_total),
            ),
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

    fn at(unix_ms: u64, shuffle_bytes_total: u64) -> Reading {
        Reading {
            unix_ms,
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
        h.record(at(13_000, 1_000)); // a worker left with its counts
        let s = h.samples();
        assert_eq!(s.len(), 3);
        assert_eq!(
            s.iter()
                .map(|s| s.shuffle_bytes_per_second)
                .collect::<Vec<_>>(),
            [0, 2_000, 0]
        );
    }

    #[test]
    fn it_keeps_the_last_minutes_only() {
        let mut h = History::default();
        for i in 0..(SAMPLES_KEPT as u64 + 50) {
            h.record(at(i * SAMPLE_INTERVAL_MS, 0));
        }
        let s = h.samples();
        assert_eq!(s.len(), SAMPLES_KEPT);
        assert_eq!(s[0].unix_ms, 50 * SAMPLE_INTERVAL_MS);
    }
}
