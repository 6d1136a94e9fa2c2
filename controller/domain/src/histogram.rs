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
        let Some(payload) = payload_of_ours(bytes) else {
            let other = self.other.get_or_insert_with(new_histogram);
            return add_decoded(other, bytes);
        };
        for counter in Counters::of(payload) {
            let (index, n) = counter?;
            let counter = self.counts.get_mut(index).ok_or_else(corrupt)?;
            *counter = counter.saturating_add(n);
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

/// [`encode`] of an empty [`new_histogram`], without building one.
pub fn empty_encoded() -> Vec<u8> {
    Writer::new(1).finish()
}

/// Records `samples` into a histogram written by [`encode`] and writes it again: the
/// same bytes as decoding it, recording each sample (saturating) and encoding the
/// result, without building the histogram. A fold adds a few samples to each of a
/// cell's six histograms; decoding one allocates and zeroes 23,552 counters and
/// encoding it walks them again, about 10 µs a histogram, which an interleaved fold
/// (hundreds of cells of a few results) paid six times a cell. This walks the stored
/// non-zero counters and the samples' counters side by side instead. Bytes of another
/// shape are decoded and encoded the ordinary way.
pub fn record_into_encoded(bytes: &[u8], samples: &[u64]) -> Result<Vec<u8>, String> {
    let payload = if bytes.is_empty() {
        &[][..]
    } else {
        match payload_of_ours(bytes) {
            Some(payload) => payload,
            None => {
                let mut h = decode(bytes)?;
                for &value in samples {
                    h.saturating_record(value);
                }
                return Ok(encode(&h));
            }
        }
    };
    let mut added: Vec<usize> = samples.iter().map(|&v| index_for(v)).collect();
    added.sort_unstable();
    let mut added = added.into_iter().peekable();
    let mut out = Writer::new(payload.len() + 4 * added.len());
    // The stored counters, each with the samples that land before it or on it.
    let mut counters = Counters::of(payload);
    for counter in counters.by_ref() {
        let (index, n) = counter?;
        if index >= COUNTS_LEN {
            return Err(corrupt());
        }
        while let Some(a) = added.next_if(|&a| a < index) {
            let run = 1 + count_equal(&mut added, a);
            out.counter(a, run)?;
        }
        out.counter(index, n.saturating_add(count_equal(&mut added, index)))?;
    }
    // A run of empty counters past the last one.
    if counters.index > COUNTS_LEN {
        return Err(corrupt());
    }
    // The samples past the last stored counter.
    while let Some(a) = added.next() {
        let run = 1 + count_equal(&mut added, a);
        out.counter(a, run)?;
    }
    Ok(out.finish())
}

fn corrupt() -> String {
    "corrupt histogram: bad payload".to_owned()
}

/// The non-zero counters of a V2 payload of [`new_histogram`]'s shape, in order:
/// (index, count). The payload lists counters one by one, a run of empty ones as one
/// negative number (ZigZag), a single empty one as a zero.
struct Counters<'a> {
    rest: &'a [u8],
    index: usize,
}

impl<'a> Counters<'a> {
    fn of(payload: &'a [u8]) -> Counters<'a> {
        Counters {
            rest: payload,
            index: 0,
        }
    }
}

impl Iterator for Counters<'_> {
    type Item = Result<(usize, u64), String>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.rest.is_empty() {
            let Some((raw, used)) = read_varint(self.rest) else {
                self.rest = &[];
                return Some(Err(corrupt()));
            };
            self.rest = &self.rest[used..];
            let n = zig_zag_decode(raw);
            if n < 0 {
                match self.index.checked_add(n.unsigned_abs() as usize) {
                    Some(index) => self.index = index,
                    None => {
                        self.rest = &[];
                        return Some(Err(corrupt()));
                    }
                }
                continue;
            }
            let index = self.index;
            self.index += 1;
            if n > 0 {
                return Some(Ok((index, n as u64)));
            }
        }
        None
    }
}

/// Takes the next items of `iter` equal to `value`, and says how many.
fn count_equal(iter: &mut std::iter::Peekable<std::vec::IntoIter<usize>>, value: usize) -> u64 {
    let mut n = 0;
    while iter.next_if_eq(&value).is_some() {
        n += 1;
    }
    n
}

/// The counter of a [`new_histogram`] that a saturating record of `value` adds to: the
/// crate's index arithmetic for these bounds (unit magnitude 0, 2,048 sub buckets);
/// values past the last counter count as the highest trackable value.
fn index_for(value: u64) -> usize {
    const SUB_BUCKET_MASK: u64 = 2 * HALF_BUCKET as u64 - 1;
    const LEADING_ZERO_COUNT_BASE: u32 = 64 - (HALF_BUCKET_MAGNITUDE + 1);
    let index = |value: u64| {
        let bucket = LEADING_ZERO_COUNT_BASE - (value | SUB_BUCKET_MASK).leading_zeros();
        let sub = (value >> bucket) as usize;
        ((bucket as usize + 1) << HALF_BUCKET_MAGNITUDE) + sub - HALF_BUCKET
    };
    match index(value) {
        i if i < COUNTS_LEN => i,
        _ => index(MAX_US),
    }
}

/// Writes a V2 serialization of [`new_histogram`]'s shape, counter by counter, as the
/// crate's serializer does: counters up to the highest non-zero one (one empty counter
/// for an empty histogram), a single empty counter as a zero and a longer run of them
/// as its negated length.
struct Writer {
    out: Vec<u8>,
    /// The next counter to write.
    next: usize,
}

impl Writer {
    fn new(payload_len: usize) -> Writer {
        let mut out = Vec::with_capacity(V2_HEADER_LEN + payload_len);
        out.extend_from_slice(&V2_COOKIE.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes()); // the payload's length, at the end
        out.extend_from_slice(&0u32.to_be_bytes()); // no normalizing offset
        out.extend_from_slice(&3u32.to_be_bytes());
        out.extend_from_slice(&1u64.to_be_bytes());
        out.extend_from_slice(&MAX_US.to_be_bytes());
        out.extend_from_slice(&1.0f64.to_bits().to_be_bytes());
        Writer { out, next: 0 }
    }

    /// Writes counter `index` (above the last written) as `count`, not zero.
    fn counter(&mut self, index: usize, count: u64) -> Result<(), String> {
        match index - self.next {
            0 => {}
            1 => self.varint(0),
            empty => self.varint(zig_zag_encode(-(empty as i64))),
        }
        let count = i64::try_from(count).map_err(|_| "histogram count too large".to_owned())?;
        self.varint(zig_zag_encode(count));
        self.next = index + 1;
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        if self.next == 0 {
            self.varint(0);
        }
        let payload_len = (self.out.len() - V2_HEADER_LEN) as u32;
        self.out[4..8].copy_from_slice(&payload_len.to_be_bytes());
        self.out
    }

    /// LEB128 in at most 9 bytes, the 9th byte whole (see [`read_varint`]).
    fn varint(&mut self, mut value: u64) {
        for _ in 0..8 {
            if value < 0x80 {
                self.out.push(value as u8);
                return;
            }
            self.out.push((value as u8 & 0x7f) | 0x80);
            value >>= 7;
        }
        self.out.push(value as u8);
    }
}

fn zig_zag_encode(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn zig_zag_decode(raw: u64) -> i64 {
    (raw >> 1) as i64 ^ -((raw & 1) as i64)
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

    proptest! {
        /// Recording samples into the bytes gives the bytes of decoding them, recording
        /// the samples and encoding the histogram: from the empty cell (no bytes, or an
        /// empty histogram's), with values from zero to past the last counter (which
        /// saturate), in any order and with repeats.
        #[test]
        fn recording_into_the_bytes_equals_recording_into_the_decoded_histogram(
            stored in proptest::collection::vec((value(), 1u64..1_000), 0..100),
            samples in proptest::collection::vec(value(), 0..60),
            no_bytes in any::<bool>(),
        ) {
            let mut h = new_histogram();
            for &(v, n) in &stored {
                h.saturating_record_n(v, n);
            }
            let bytes = if no_bytes && stored.is_empty() { Vec::new() } else { encode(&h) };
            let recorded = record_into_encoded(&bytes, &samples).unwrap();
            for &v in &samples {
                h.saturating_record(v);
            }
            prop_assert_eq!(recorded, encode(&h));
        }
    }

    /// Values across the range, dense where the counters' layout has edges: small
    /// values (bucket 0 and its halves), powers of two, and the hour and past it.
    fn value() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..5_000,
            (0u32..32, 0u64..4).prop_map(|(shift, d)| (1u64 << shift).saturating_sub(2) + d),
            MAX_US - 5_000..MAX_US + 10_000_000,
            0u64..5_000_000_000,
            Just(u64::MAX),
        ]
    }

    #[test]
    fn recording_into_bytes_of_another_shape_decodes_them_and_bad_bytes_are_refused() {
        let mut other = Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).unwrap();
        other.record(1234).unwrap();
        let recorded = decode(&record_into_encoded(&encode(&other), &[7, 7]).unwrap()).unwrap();
        assert_eq!(recorded.len(), 3);
        assert_eq!(recorded.count_at(7), 2);
        let mut ours = encode(&new_histogram());
        // A run of empty counters past the last one.
        ours.truncate(V2_HEADER_LEN);
        ours.extend_from_slice(&[0xff, 0xff, 0x7f]);
        ours[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(record_into_encoded(&ours, &[1]).is_err());
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
    fn the_empty_histograms_bytes_are_the_crates() {
        assert_eq!(empty_encoded(), encode(&new_histogram()));
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
