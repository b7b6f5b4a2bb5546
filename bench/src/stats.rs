//! Latency histograms and their summaries.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Longest latency a histogram records exactly; longer ones are clamped to it.
const MAX_NANOS: u64 = 120_000_000_000;

/// Latencies of one operation, in nanoseconds, plus its error count.
#[derive(Clone)]
pub struct OpStats {
    pub hist: Histogram<u64>,
    pub errors: u64,
    /// A few distinct error messages, for the report.
    pub samples: Vec<String>,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            hist: Histogram::new_with_bounds(1_000, MAX_NANOS, 3).expect("valid histogram bounds"),
            errors: 0,
            samples: Vec::new(),
        }
    }
}

impl OpStats {
    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(MAX_NANOS);
        self.hist.saturating_record(nanos.clamp(1_000, MAX_NANOS));
    }

    pub fn error(&mut self, message: String) {
        self.errors += 1;
        if self.samples.len() < 3 && !self.samples.contains(&message) {
            self.samples.push(message);
        }
    }

    /// Whether nothing was recorded (an operation a round never reached).
    pub fn is_empty(&self) -> bool {
        self.hist.is_empty() && self.errors == 0
    }

    pub fn merge(&mut self, other: &OpStats) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
        self.errors += other.errors;
        for s in &other.samples {
            if self.samples.len() < 3 && !self.samples.contains(s) {
                self.samples.push(s.clone());
            }
        }
    }

    pub fn summary(&self, elapsed: Duration) -> OpSummary {
        let ms = |q: f64| self.hist.value_at_quantile(q) as f64 / 1e6;
        let count = self.hist.len();
        OpSummary {
            count,
            errors: self.errors,
            ops_per_sec: per_second(count, elapsed),
            p50_ms: ms(0.50),
            p90_ms: ms(0.90),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: self.hist.max() as f64 / 1e6,
            error_samples: self.samples.clone(),
        }
    }
}

pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        count as f64 / elapsed.as_secs_f64()
    }
}

/// What one operation measured in one round.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct OpSummary {
    pub count: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub error_samples: Vec<String>,
}

/// Stats per operation name ("put_tgt", "consume", ... and "all").
pub type OpMap = BTreeMap<&'static str, OpStats>;

/// The median of some values (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return 0.0;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// The median of every field over the rounds; error samples of all rounds.
pub fn median_summary(rounds: &[&OpSummary]) -> OpSummary {
    let pick = |f: fn(&OpSummary) -> f64| median(&rounds.iter().map(|r| f(r)).collect::<Vec<_>>());
    let mut samples: Vec<String> = Vec::new();
    for r in rounds {
        for s in &r.error_samples {
            if samples.len() < 3 && !samples.contains(s) {
                samples.push(s.clone());
            }
        }
    }
    OpSummary {
        count: pick(|r| r.count as f64).round() as u64,
        errors: rounds.iter().map(|r| r.errors).sum(),
        ops_per_sec: pick(|r| r.ops_per_sec),
        p50_ms: pick(|r| r.p50_ms),
        p90_ms: pick(|r| r.p90_ms),
        p99_ms: pick(|r| r.p99_ms),
        p999_ms: pick(|r| r.p999_ms),
        max_ms: pick(|r| r.max_ms),
        error_samples: samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn summary_percentiles_within_histogram_precision() {
        let mut s = OpStats::default();
        for i in 1..=1000u64 {
            s.record(Duration::from_micros(i * 10)); // 10 us .. 10 ms
        }
        s.error("boom".into());
        s.error("boom".into());
        let sum = s.summary(Duration::from_secs(2));
        assert_eq!(sum.count, 1000);
        assert_eq!(sum.errors, 2);
        assert_eq!(sum.error_samples, vec!["boom".to_owned()]);
        assert!((sum.ops_per_sec - 500.0).abs() < 1e-9);
        assert!((sum.p50_ms - 5.0).abs() < 0.01, "{}", sum.p50_ms);
        assert!((sum.p99_ms - 9.9).abs() < 0.02, "{}", sum.p99_ms);
        assert!((sum.max_ms - 10.0).abs() < 0.02, "{}", sum.max_ms);
    }

    #[test]
    fn merging_adds_counts_and_errors() {
        let mut a = OpStats::default();
        let mut b = OpStats::default();
        a.record(Duration::from_millis(1));
        b.record(Duration::from_millis(3));
        b.error("x".into());
        a.merge(&b);
        assert_eq!(a.hist.len(), 2);
        assert_eq!(a.errors, 1);
    }

    #[test]
    fn median_summary_takes_field_medians_and_sums_errors() {
        let r = |ops: f64, p99: f64, errors: u64| OpSummary {
            ops_per_sec: ops,
            p99_ms: p99,
            errors,
            ..OpSummary::default()
        };
        let rounds = [r(10.0, 3.0, 1), r(30.0, 1.0, 0), r(20.0, 2.0, 2)];
        let m = median_summary(&rounds.iter().collect::<Vec<_>>());
        assert_eq!(m.ops_per_sec, 20.0);
        assert_eq!(m.p99_ms, 2.0);
        assert_eq!(m.errors, 3);
    }
}
