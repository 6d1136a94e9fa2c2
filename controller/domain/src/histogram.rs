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

/// The V2 (uncompressed) serialization's cookie and header length.
const V2_COOKIE: u32 = 0x1c84_9313;
const V2_HEADER_LEN: usize = 40;

/// Counts per half bucket of [`new_histogram`]: 3 significant digits need 2,048 sub
/// buckets (the power of two above 2 x 10^3), half of them past the first bucket.
const HALF_BUCKET_MAGNITUDE: u32 = 10;
const HALF_BUCKET: usize = 1 << HALF_BUCKET_MAGNITUDE;

/// Counters of a [`new_histogram`]: 23 half buckets of 1,024 (22 buckets, 1 µs to past
/// an hour, and the first bucket's lower half). Known here so that a [`Merger`] does not
/// build a whole histogram to learn it (a test checks it against the crate's).
const COUNTS_LEN: usize = 23 * HALF_BUCKET;

/// Sums many stored histograms (the cells of a report) counter by counter, and makes
/// one histogram of them at the end. Decoding each stored histogram would allocate and
/// zero a whole counts array (23,552 counters for 1 µs to 1 h) only to add it and drop
/// it; recording its counts one by one would look up each value's counter again. This
/// reads the counts off the bytes (the V2 payload lists non-zero counters, runs of empty
/// ones as one negative number) and adds them into one array.
pub struct Merger {
    counts: Vec<u64>,
    /// What came in another shape (decoded and added the ordinary way).
    other: Option<Histogram<u64>>,
}

impl Default for Merger {
    fn default() -> Merger {
        Merger::new()
    }
}

impl Merger {
    pub fn new() -> Merger {
        Merger {
            counts: vec![0; COUNTS_LEN],
            other: None,
        }
    }

    /// Adds a histogram written by [`encode`]. Bytes that do not parse are an error,
    /// after some of their counts may have been added: the caller drops the merger then
    /// (a report with a corrupt cell fails as a whole).
    pub fn add_encoded(&mut self, bytes: &[u8]) -> Result<(), String> {
        if bytes.is_empty() {
            return Ok(());
        }
        let Some(mut payload) = payload_of_ours(bytes) else {
            let other = self.other.get_or_insert_with(new_histogram);
            return add_decoded(other, bytes);
        };
        let corrupt = || "corrupt histogram: bad payload".to_owned();
        let mut index: usize = 0;
        while !payload.is_empty() {
            let (raw, used) = read_varint(payload).ok_or_else(corrupt)?;
            payload = &payload[used..];
            // ZigZag: a negative number is a run of empty counters.
            let n = (raw >> 1) as i64 ^ -((raw & 1) as i64);
            if n < 0 {
                index = index
                    .checked_add(n.unsigned_abs() as usize)
                    .ok_or_else(corrupt)?;
                continue;
            }
            if n > 0 {
                let counter = self.counts.get_mut(index).ok_or_else(corrupt)?;
                *counter = counter.saturating_add(n as u64);
            }
            index += 1;
        }
        Ok(())
    }

    /// The sum, as a histogram.
    pub fn finish(self) -> Result<Histogram<u64>, String> {
        let mut h = self.other.unwrap_or_else(new_histogram);
        for (index, &n) in self.counts.iter().enumerate() {
            if n > 0 {
                h.record_n(value_at_index(index), n)
                    .map_err(|e| format!("cannot merge histograms: {e:?}"))?;
            }
        }
        Ok(h)
    }
}

/// The V2 payload of bytes of [`new_histogram`]'s shape; `None` for any other shape.
fn payload_of_ours(bytes: &[u8]) -> Option<&[u8]> {
    let ours = bytes.len() >= V2_HEADER_LEN
        && be_u32(&bytes[0..4]) == V2_COOKIE
        && be_u32(&bytes[8..12]) == 0 // no normalizing offset
        && be_u32(&bytes[12..16]) == 3
        && be_u64(&bytes[16..24]) == 1
        && be_u64(&bytes[24..32]) == MAX_US
        && f64::from_bits(be_u64(&bytes[32..40])) == 1.0;
    if !ours {
        return None;
    }
    let payload_len = be_u32(&bytes[4..8]) as usize;
    bytes.get(V2_HEADER_LEN..V2_HEADER_LEN.checked_add(payload_len)?)
}

fn add_decoded(into: &mut Histogram<u64>, bytes: &[u8]) -> Result<(), String> {
    into.add(&decode(bytes)?)
        .map_err(|e| format!("cannot merge histograms: {e:?}"))
}

/// The value that counter `index` of a [`new_histogram`] counts (its lowest).
fn value_at_index(index: usize) -> u64 {
    let bucket = (index >> HALF_BUCKET_MAGNITUDE) as i64 - 1;
    let sub = (index & (HALF_BUCKET - 1)) + HALF_BUCKET;
    if bucket < 0 {
        (sub - HALF_BUCKET) as u64
    } else {
        (sub as u64) << bucket
    }
}

/// A LEB128 number of at most 9 bytes (the 9th byte whole), as the V2 format writes
/// them; with how many bytes it took.
fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    // Most counts and runs of empty counters fit in one byte.
    match bytes {
        [b, ..] if b & 0x80 == 0 => return Some((u64::from(*b), 1)),
        [b0, b1, ..] if b1 & 0x80 == 0 => {
            return Some((u64::from(b0 & 0x7f) | (u64::from(*b1) << 7), 2))
        }
        _ => {}
    }
    let mut value = 0u64;
    for (i, &b) in bytes.iter().take(9).enumerate() {
        if i == 8 {
            return Some((value | (u64::from(b) << 56), 9));
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
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

    proptest! {
        /// Adding stored bytes equals decoding them and adding the histogram: every
        /// count lands in the same counter, whatever the values (sub-millisecond to past
        /// the hour, where values saturate) and however many.
        #[test]
        fn adding_the_bytes_equals_adding_the_decoded_histogram(
            stored in proptest::collection::vec((0u64..5_000_000_000, 1u64..1_000), 0..300),
            already in proptest::collection::vec(0u64..50_000_000, 0..50),
        ) {
            let mut h = new_histogram();
            for &(v, n) in &stored {
                h.saturating_record_n(v, n);
            }
            let bytes = encode(&h);
            let mut by_decoding = new_histogram();
            for &v in &already {
                by_decoding.saturating_record(v);
            }
            let mut merger = Merger::new();
            merger.add_encoded(&bytes).unwrap();
            prop_assert!(merger.other.is_none(), "read as bytes of our shape, not decoded");
            merger.add_encoded(&encode(&by_decoding)).unwrap();
            let merged = merger.finish().unwrap();
            by_decoding.add(decode(&bytes).unwrap()).unwrap();
            let b: Vec<(u64, u64)> = by_decoding.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect();
            let m: Vec<(u64, u64)> = merged.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect();
            prop_assert_eq!(merged.len(), by_decoding.len());
            prop_assert_eq!(m, b);
        }
    }

    #[test]
    fn bytes_of_another_shape_are_decoded_and_bad_bytes_refused() {
        let mut other = Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).unwrap();
        other.record(1234).unwrap();
        let mut ours = new_histogram();
        ours.record(99).unwrap();
        let mut merger = Merger::new();
        merger.add_encoded(&encode(&other)).unwrap();
        assert!(merger.other.is_some(), "another shape is decoded");
        merger.add_encoded(&encode(&ours)).unwrap();
        merger.add_encoded(&[]).unwrap();
        assert!(merger
            .add_encoded(b"not a histogram at all, not even close to one")
            .is_err());
        assert_eq!(merger.finish().unwrap().len(), 2);
    }

    #[test]
    fn a_merger_has_one_counter_per_counter_of_the_histogram() {
        assert_eq!(COUNTS_LEN, new_histogram().distinct_values());
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
