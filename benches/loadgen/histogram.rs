//! Latency histograms: [`hdrhistogram`] in microseconds, from 1 µs to one
//! hour with three significant digits (a recorded value is off by at most
//! 0.1 %), so percentiles stay exact enough however many values a run
//! records, in constant memory. Values beyond the hour are recorded as an
//! hour; zero is recorded as zero.

use std::time::Duration;

use serde::Serialize;

/// Largest value kept, in microseconds (one hour).
const MAX_MICROS: u64 = 3_600_000_000;
/// Significant decimal digits kept.
const SIGNIFICANT_DIGITS: u8 = 3;

/// A latency histogram.
#[derive(Clone, Debug)]
pub struct Histogram {
    micros: hdrhistogram::Histogram<u64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// What a report shows of a histogram, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            micros: hdrhistogram::Histogram::new_with_bounds(1, MAX_MICROS, SIGNIFICANT_DIGITS)
                .expect("valid histogram bounds"),
        }
    }

    /// Records `value`, rounded down to the microsecond.
    pub fn record(&mut self, value: Duration) {
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.record_micros(micros);
    }

    /// Records `micros` microseconds (at most an hour).
    pub fn record_micros(&mut self, micros: u64) {
        self.micros.saturating_record(micros.min(MAX_MICROS));
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        // Both have the same bounds, so adding cannot fail.
        self.micros.add(&other.micros).expect("same bounds");
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.micros.len()
    }

    /// The value at quantile `q` (0.0 to 1.0); zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.micros.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_micros(self.micros.value_at_quantile(q))
    }

    /// The largest value recorded (as the histogram keeps it); zero when
    /// empty.
    pub fn max(&self) -> Duration {
        if self.micros.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_micros(self.micros.max())
    }

    /// p50, p90, p99, p99.9, max and mean, in milliseconds (to the
    /// microsecond).
    pub fn percentiles(&self) -> Percentiles {
        let ms = |value: Duration| value.as_micros() as f64 / 1_000.0;
        Percentiles {
            count: self.count(),
            p50_ms: ms(self.quantile(0.50)),
            p90_ms: ms(self.quantile(0.90)),
            p99_ms: ms(self.quantile(0.99)),
            p999_ms: ms(self.quantile(0.999)),
            max_ms: ms(self.max()),
            mean_ms: if self.micros.is_empty() {
                0.0
            } else {
                self.micros.mean().round() / 1_000.0
            },
        }
    }
}

impl Percentiles {
    /// `p50 1.23 ms, p99 4.56 ms, max 7.89 ms`, as the report lines show
    /// them.
    pub fn brief(&self) -> String {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within the histogram's precision (0.1 %, and 1 µs).
    fn close(actual: Duration, expected: Duration) -> bool {
        let (a, e) = (actual.as_micros() as f64, expected.as_micros() as f64);
        (a - e).abs() <= e * 0.001 + 1.0
    }

    #[test]
    fn percentiles_of_a_uniform_run_are_where_they_belong() {
        let mut histogram = Histogram::new();
        for ms in 1..=1_000 {
            histogram.record(Duration::from_millis(ms));
        }
        assert_eq!(histogram.count(), 1_000);
        for (q, ms) in [(0.5, 500), (0.9, 900), (0.99, 990), (1.0, 1_000)] {
            let value = histogram.quantile(q);
            assert!(close(value, Duration::from_millis(ms)), "q{q}: {value:?}");
        }
        assert!(close(histogram.max(), Duration::from_secs(1)));
        let shown = histogram.percentiles();
        assert!((shown.mean_ms - 500.5).abs() < 0.6, "{shown:?}");
        assert!((shown.p99_ms - 990.0).abs() < 1.0, "{shown:?}");
        assert_eq!(shown.count, 1_000);
    }

    /// One slow request in a thousand is the p99.9, not the p99: the
    /// histogram keeps the tail, it does not average it away.
    #[test]
    fn the_tail_is_kept() {
        let mut histogram = Histogram::new();
        for _ in 0..999 {
            histogram.record(Duration::from_millis(2));
        }
        histogram.record(Duration::from_secs(3));
        assert!(close(histogram.quantile(0.99), Duration::from_millis(2)));
        assert!(close(histogram.quantile(0.9995), Duration::from_secs(3)));
        assert!(close(histogram.max(), Duration::from_secs(3)));
    }

    #[test]
    fn merging_adds_the_values_of_both() {
        let (mut fast, mut slow) = (Histogram::new(), Histogram::new());
        for _ in 0..90 {
            fast.record(Duration::from_millis(1));
        }
        for _ in 0..10 {
            slow.record(Duration::from_millis(100));
        }
        fast.merge(&slow);
        assert_eq!(fast.count(), 100);
        assert!(close(fast.quantile(0.5), Duration::from_millis(1)));
        assert!(close(fast.quantile(0.95), Duration::from_millis(100)));
    }

    /// Empty, zero and too large values do not panic: an empty histogram
    /// shows zeros, zero is zero, anything past an hour is an hour.
    #[test]
    fn edges_are_recorded_without_panicking() {
        let empty = Histogram::new();
        assert_eq!(empty.percentiles(), Percentiles::default());
        let mut histogram = Histogram::new();
        histogram.record(Duration::ZERO);
        assert_eq!(histogram.quantile(0.5), Duration::ZERO);
        histogram.record(Duration::from_secs(10 * 3_600));
        assert_eq!(histogram.count(), 2);
        assert!(close(histogram.max(), Duration::from_secs(3_600)));
        histogram.record_micros(u64::MAX);
        assert_eq!(histogram.count(), 3);
    }
}
