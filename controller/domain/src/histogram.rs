//! HdrHistogram helpers: one configuration for every latency histogram, and its
//! serialized (V2, uncompressed) form as stored in the `aggregates` table.
//!
//! Range: 1 µs to 1 hour at 3 significant digits, i.e. every reported percentile is
//! within 0.1 % of the exact sample. Values past the range are clamped (saturating
//! record) rather than dropped, so a pathological sample still counts.

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;

/// Highest trackable value, microseconds (one hour).
pub const MAX_US: u64 = 3_600_000_000;

/// An empty latency histogram.
#[allow(clippy::expect_used)] // constant bounds, checked by the tests below
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant histogram bounds are valid")
}

/// Serializes a histogram (V2 format).
pub fn encode(h: &Histogram<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail for I/O reasons; the only error is a histogram too
    // large to encode, which our bounds rule out.
    if V2Serializer::new().serialize(h, &mut out).is_err() {
        out.clear();
    }
    out
}

/// Reads a histogram written by [`encode`].
pub fn decode(bytes: &[u8]) -> Result<Histogram<u64>, String> {
    if bytes.is_empty() {
        return Ok(new_histogram());
    }
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| format!("corrupt histogram: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Merging per-bucket histograms gives the same percentiles as one histogram of
        /// all samples: reports can merge aggregates instead of rescanning results.
        #[test]
        fn merging_buckets_equals_one_histogram_of_all_samples(
            buckets in proptest::collection::vec(proptest::collection::vec(0u64..5_000_000, 0..200), 1..8)
        ) {
            let mut all = new_histogram();
            let mut merged = new_histogram();
            for bucket in &buckets {
                let mut h = new_histogram();
                for &v in bucket {
                    h.saturating_record(v);
                    all.saturating_record(v);
                }
                let stored = decode(&encode(&h)).unwrap();
                merged.add(&stored).unwrap();
            }
            prop_assert_eq!(merged.len(), all.len());
            for q in [0.5, 0.9, 0.95, 0.99, 1.0] {
                prop_assert_eq!(merged.value_at_quantile(q), all.value_at_quantile(q));
            }
        }
    }

    #[test]
    fn percentiles_are_within_a_tenth_of_a_percent() {
        let mut h = new_histogram();
        for v in 1..=100_000u64 {
            h.record(v * 10).unwrap();
        }
        let p95 = h.value_at_quantile(0.95) as f64;
        assert!((p95 - 950_000.0).abs() / 950_000.0 < 0.001, "{p95}");
    }
}
