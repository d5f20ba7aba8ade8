//! Latency and delay statistics: a small mergeable histogram.
//!
//! The bench records hundreds of thousands of samples per second (one per delivered message)
//! and must merge the samples of several worker processes, so it keeps counts in log-linear
//! buckets (32 per power of two, so any reported value is within about 3% of a real sample)
//! instead of the samples themselves. The histogram serialises sparsely, as the list of
//! non-empty buckets, which keeps a worker's final report small.

use serde::{Deserialize, Serialize};

/// Sub-buckets per power of two; the relative error of a reported value is at most 1/32.
const SUB: u64 = 32;
/// Values below this are counted exactly (one bucket per value).
const LINEAR: u64 = 2 * SUB;
/// Bucket count: exact buckets for `0..LINEAR`, then `SUB` per power of two up to 2^64.
const BUCKETS: usize = (LINEAR + (64 - 6) * SUB) as usize;

/// A histogram of `u64` samples (the bench uses microseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "Sparse", from = "Sparse")]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u64,
    min: u64,
    max: u64,
}

/// The serialised form: only the non-empty buckets.
#[derive(Serialize, Deserialize)]
struct Sparse {
    buckets: Vec<(u32, u64)>,
    sum: u64,
    min: u64,
    max: u64,
}

impl From<Histogram> for Sparse {
    fn from(h: Histogram) -> Sparse {
        Sparse {
            buckets: h
                .counts
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(i, &c)| (i as u32, c))
                .collect(),
            sum: h.sum,
            min: h.min,
            max: h.max,
        }
    }
}

impl From<Sparse> for Histogram {
    fn from(s: Sparse) -> Histogram {
        let mut h = Histogram::new();
        for (i, c) in s.buckets {
            if let Some(slot) = h.counts.get_mut(i as usize) {
                *slot += c;
                h.count += c;
            }
        }
        if h.count > 0 {
            h.sum = s.sum;
            h.min = s.min;
            h.max = s.max;
        }
        h
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - u64::from(v.leading_zeros()); // >= 6
    let sub = (v >> (exp - 5)) & (SUB - 1);
    (LINEAR + (exp - 6) * SUB + sub) as usize
}

/// The smallest and largest value that fall into bucket `i`.
fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < LINEAR {
        return (i, i);
    }
    let exp = (i - LINEAR) / SUB + 6;
    let sub = (i - LINEAR) % SUB;
    let width = 1u64 << (exp - 5);
    let low = (SUB + sub) << (exp - 5);
    (low, low.saturating_add(width - 1))
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Records one sample.
    pub fn record(&mut self, v: u64) {
        self.counts[bucket_of(v)] += 1;
        self.count += 1;
        self.sum = self.sum.saturating_add(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Smallest sample, if any.
    pub fn min(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min)
    }

    /// Largest sample, if any.
    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    /// Mean of the samples, if any.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// The value at or below which `q` percent of the samples lie (nearest rank), reported as
    /// the middle of its bucket and clamped to the real minimum and maximum.
    pub fn percentile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let q = q.clamp(0.0, 100.0);
        let rank = ((q / 100.0) * self.count as f64).ceil().max(1.0) as u64;
        if rank >= self.count {
            return Some(self.max);
        }
        if rank == 1 {
            return Some(self.min);
        }
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, high) = bucket_range(i);
                let mid = low + (high - low) / 2;
                return Some(mid.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// The usual summary, converted from microseconds to milliseconds.
    pub fn summary_ms(&self) -> Option<Percentiles> {
        let ms = |v: Option<u64>| v.map_or(0.0, |v| v as f64 / 1000.0);
        (self.count > 0).then(|| Percentiles {
            count: self.count,
            min: ms(self.min()),
            p50: ms(self.percentile(50.0)),
            p90: ms(self.percentile(90.0)),
            p99: ms(self.percentile(99.0)),
            p999: ms(self.percentile(99.9)),
            max: ms(self.max()),
            mean: self.mean().unwrap_or(0.0) / 1000.0,
        })
    }
}

/// A distribution summary in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_has_no_percentiles() {
        let h = Histogram::new();
        assert_eq!(h.percentile(50.0), None);
        assert_eq!(h.summary_ms(), None);
        assert_eq!(h.min(), None);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in 1..=10 {
            h.record(v);
        }
        assert_eq!(h.percentile(50.0), Some(5));
        assert_eq!(h.percentile(90.0), Some(9));
        assert_eq!(h.percentile(100.0), Some(10));
        assert_eq!(h.percentile(0.0), Some(1));
        assert_eq!(h.mean(), Some(5.5));
    }

    #[test]
    fn every_value_lands_in_a_bucket_that_contains_it() {
        let mut v = 1u64;
        while v < u64::MAX / 3 {
            for probe in [v, v + 1, v * 2 - 1, v + v / 3] {
                let (low, high) = bucket_range(bucket_of(probe));
                assert!(
                    low <= probe && probe <= high,
                    "{probe} not in {low}..={high}"
                );
                assert!(high - low <= low / 16 + 1, "bucket too wide at {probe}");
            }
            v = v * 3 + 1;
        }
        assert!(bucket_of(u64::MAX) < BUCKETS);
    }

    #[test]
    fn percentiles_are_within_three_percent() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(50.0, 50_000.0), (99.0, 99_000.0), (99.9, 99_900.0)] {
            let got = h.percentile(q).unwrap() as f64;
            assert!((got - want).abs() / want < 0.035, "p{q}: {got} vs {want}");
        }
        assert_eq!(h.max(), Some(100_000));
        assert_eq!(h.percentile(100.0), Some(100_000));
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        let mut all = Histogram::new();
        for v in 0..5000u64 {
            let x = v * v % 7919 + 3;
            if v % 3 == 0 {
                a.record(x);
            } else {
                b.record(x);
            }
            all.record(x);
        }
        a.merge(&b);
        assert_eq!(a, all);
        a.merge(&Histogram::new());
        assert_eq!(a, all);
    }

    #[test]
    fn serialises_sparsely_and_round_trips() {
        let mut h = Histogram::new();
        for v in [3, 700, 700, 123_456, 9_999_999] {
            h.record(v);
        }
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.len() < 200, "{json}");
        let back: Histogram = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
        let empty: Histogram =
            serde_json::from_str(&serde_json::to_string(&Histogram::new()).unwrap()).unwrap();
        assert_eq!(empty, Histogram::new());
    }

    #[test]
    fn summary_converts_to_milliseconds() {
        let mut h = Histogram::new();
        h.record(2_000);
        h.record(4_000);
        let s = h.summary_ms().unwrap();
        assert_eq!(s.count, 2);
        assert_eq!(s.min, 2.0);
        assert_eq!(s.max, 4.0);
        assert!((s.mean - 3.0).abs() < 1e-9);
        assert!((s.p50 - 2.0).abs() < 0.07, "{}", s.p50);
    }
}
