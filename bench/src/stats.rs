//! Latency samples and their summaries. Samples are kept exactly (one `u32`
//! of microseconds each) and sorted once per step: a step holds at most a
//! few million samples, so exact percentiles cost less than a histogram's
//! bookkeeping on the reader threads.

use serde_json::{Value, json};

/// Percentiles of one set of latency samples, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// Summarizes samples given in microseconds (sorting them in place).
    pub fn of_micros(samples: &mut [u32]) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            // Nearest-rank percentile: the smallest sample with at least q of
            // all samples at or below it.
            let rank = (q * samples.len() as f64).ceil().max(1.0) as usize;
            f64::from(samples[rank.min(samples.len()) - 1]) / 1000.0
        };
        let sum: u64 = samples.iter().map(|&s| u64::from(s)).sum();
        Summary {
            count: samples.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: f64::from(samples[samples.len() - 1]) / 1000.0,
            mean: sum as f64 / samples.len() as f64 / 1000.0,
        }
    }

    /// Summarizes durations measured directly.
    pub fn of_durations(samples: &[std::time::Duration]) -> Summary {
        let mut micros: Vec<u32> = samples
            .iter()
            .map(|d| d.as_micros().min(u128::from(u32::MAX)) as u32)
            .collect();
        Summary::of_micros(&mut micros)
    }

    pub fn to_json(self) -> Value {
        json!({
            "count": self.count,
            "p50_ms": round3(self.p50),
            "p90_ms": round3(self.p90),
            "p99_ms": round3(self.p99),
            "p99_9_ms": round3(self.p999),
            "max_ms": round3(self.max),
            "mean_ms": round3(self.mean),
        })
    }
}

/// Rounds to three decimals (microseconds, for values in milliseconds).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<u32> = (1..=1000).rev().map(|i| i * 1000).collect();
        let s = Summary::of_micros(&mut samples);
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50, 500.0);
        assert_eq!(s.p90, 900.0);
        assert_eq!(s.p99, 990.0);
        assert_eq!(s.p999, 999.0);
        assert_eq!(s.max, 1000.0);
        assert_eq!(Summary::of_micros(&mut []), Summary::default());
        let one = Summary::of_micros(&mut [1500]);
        assert_eq!((one.p50, one.p999, one.max), (1.5, 1.5, 1.5));
    }
}
