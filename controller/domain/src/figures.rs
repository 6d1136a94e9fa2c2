//! The figures of a result besides its timing phases, and how an aggregate cell keeps
//! their histograms.
//!
//! The phases have columns of their own everywhere (results, aggregates, reports), as
//! they always had. Every other figure ([`Figure::phase`] is `None`) is kept in a
//! cell's one `figures` value: a histogram per figure, keyed by the figure's wire name.
//! A new figure (loaded latency, jitter, loss, stall time for the streaming and gaming
//! kinds) is therefore a [`Figure`] variant, the code that measures or derives it, and
//! its place in [`of_result`]: no migration, and no new code in the fold, the
//! roll-ups or the reports, which go through [`Figures`] and [`FigureMergers`].
//!
//! Encoding: a version byte, then per figure its name's length (one byte), the name,
//! the histogram's length (four bytes, big-endian) and the histogram as
//! [`histogram::encode`] writes it. Names, not ordinals, so that a replica that does
//! not know a figure (an older one during a rolling upgrade) merges and keeps its
//! histogram instead of dropping it.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use lastmile_protocol::{Figure, Measurement, UdpSummary};
use lastmile_storage::results::StoredResult;

use crate::histogram;

/// Smallest body whose transfer gives a goodput: a smaller one arrives within TCP's
/// first window or two, and bytes over its transfer time measure the round trip, not
/// the bandwidth.
pub const GOODPUT_MIN_BYTES: i64 = 64 * 1024;

/// The figures other than phases that a stored result adds to its cell: none for a
/// failed result (as for the phases). A result whose kind reported figures of its own
/// (a throughput load) has those, as ingest derived them ([`of_measurement`], the
/// `figures` column); figures this replica does not know are skipped. Otherwise
/// goodput for an http result whose body was at least [`GOODPUT_MIN_BYTES`] and took
/// time to arrive; a page result's bytes count the whole page while its transfer is the
/// document's, so it has none.
pub fn of_result(r: &StoredResult) -> Vec<(Figure, u64)> {
    let mut figures = Vec::new();
    if r.error_kind.is_some() {
        return figures;
    }
    if let Some(stored) = &r.figures {
        return parse(stored);
    }
    if r.page.is_none() && r.bytes >= GOODPUT_MIN_BYTES && r.transfer_us > 0 {
        figures.push((Figure::Goodput, goodput_kbps(r.bytes, r.transfer_us)));
    }
    figures
}

/// The figures a result's `figures` column holds, those this replica knows.
pub fn parse(stored: &str) -> Vec<(Figure, u64)> {
    // Written by `of_measurement` (a JSON object of wire name to value); a value that
    // does not read is left out rather than failing the fold of a whole batch.
    let map: BTreeMap<String, u64> = serde_json::from_str(stored).unwrap_or_default();
    map.into_iter()
        .filter_map(|(name, value)| Some((name.parse::<Figure>().ok()?, value)))
        .collect()
}

/// The figures a measurement's kind reported, as the controller derives them from its
/// summary, as the `figures` column stores them (`None` when the kind reports none, or
/// the measurement failed). A throughput load: goodput as all its bytes over the
/// load's time (when at least [`GOODPUT_MIN_BYTES`] arrived), and the idle and loaded
/// latency as the medians of their probes' round trips (the median, not the mean: one
/// probe that met a retransmission does not move it). A video session: its start-up
/// delay and its time stalled (0 when it played through: a session without a stall is
/// a sample of 0, so that the stall time's percentiles say how many sessions stalled).
/// A udp stream ([`of_stream`]): its loss, and the round trip and jitter of its echoes.
pub fn of_measurement(m: &Measurement) -> Option<String> {
    if m.error.is_some() {
        return None;
    }
    if let Some(stream) = &m.udp {
        return serde_json::to_string(&of_stream(stream)).ok();
    }
    if let Some(session) = &m.video {
        let figures = BTreeMap::from([
            (Figure::StartupDelay.as_str(), session.startup_us),
            (Figure::StallTime.as_str(), session.stall_us),
        ]);
        return serde_json::to_string(&figures).ok();
    }
    let load = m.throughput.as_ref()?;
    let mut figures = BTreeMap::new();
    if load.bytes >= GOODPUT_MIN_BYTES as u64 && load.duration_us > 0 {
        let kbps = goodput_kbps(
            load.bytes.min(i64::MAX as u64) as i64,
            load.duration_us.min(i64::MAX as u64) as i64,
        );
        figures.insert(Figure::Goodput.as_str(), kbps);
    }
    if let Some(idle) = median(&load.idle_latency_us) {
        figures.insert(Figure::IdleLatency.as_str(), idle);
    }
    if let Some(loaded) = median(&load.loaded_latency_us) {
        figures.insert(Figure::LoadedLatency.as_str(), loaded);
    }
    serde_json::to_string(&figures).ok()
}

/// A udp stream's figures: loss as the share of probes sent that did not come back
/// (none when nothing was sent), the round trip as the median of the echoes', and the
/// jitter (see [`UdpSummary::jitter_us`]). A stream whose every probe was lost has its
/// loss only.
pub fn of_stream(stream: &UdpSummary) -> BTreeMap<&'static str, u64> {
    [
        (Figure::Loss, stream.loss_ppm()),
        (Figure::Rtt, stream.median_rtt_us()),
        (Figure::Jitter, stream.jitter_us()),
    ]
    .into_iter()
    .filter_map(|(figure, value)| Some((figure.as_str(), value?)))
    .collect()
}

/// The median of round trips, µs (the lower middle of an even count: a value that was
/// measured, not one between two).
fn median(values: &[u64]) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    Some(sorted[(sorted.len() - 1) / 2])
}

/// Bytes over microseconds as kilobits a second, rounded, at most the histograms' range.
pub fn goodput_kbps(bytes: i64, transfer_us: i64) -> u64 {
    let bits = bytes.max(0) as u128 * 8;
    // bits / (us / 10^6) / 10^3 = bits * 10^3 / us
    let kbps = (bits * 1_000 + transfer_us.max(1) as u128 / 2) / transfer_us.max(1) as u128;
    kbps.min(histogram::MAX_US as u128) as u64
}

/// A cell's histograms of figures other than phases, as recorded or decoded.
#[derive(Debug, Default)]
pub struct Figures {
    known: BTreeMap<Figure, Histogram<u64>>,
}

impl Figures {
    /// Records one value of `figure`.
    pub fn record(&mut self, figure: Figure, value: u64) {
        self.known
            .entry(figure)
            .or_insert_with(histogram::new_histogram)
            .saturating_record(value);
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Adds these histograms to a cell's stored value (`None`: the cell has none yet),
    /// in place; with nothing recorded the value is left as it is, not copied. Figures
    /// this replica does not know are kept as they were.
    pub fn merge_into(&self, stored: &mut Option<Vec<u8>>) -> Result<(), String> {
        if self.is_empty() {
            return Ok(());
        }
        let mut entries: BTreeMap<String, Vec<u8>> = match stored.as_deref() {
            Some(bytes) => decode(bytes)?
                .into_iter()
                .map(|(name, hist)| (name.to_owned(), hist.to_vec()))
                .collect(),
            None => BTreeMap::new(),
        };
        for (figure, add) in &self.known {
            let name = figure.as_str();
            let mut h = match entries.get(name) {
                Some(bytes) => histogram::decode(bytes)?,
                None => histogram::new_histogram(),
            };
            h.add(add)
                .map_err(|e| format!("merging a {name} histogram: {e:?}"))?;
            entries.insert(name.to_owned(), histogram::encode(&h));
        }
        *stored = Some(encode(
            entries.iter().map(|(n, h)| (n.as_str(), h.as_slice())),
        ));
        Ok(())
    }
}

/// Sums the `figures` values of many cells (a report's, a day's roll-up), histogram by
/// histogram, each made once at the end.
#[derive(Default)]
pub struct FigureMergers {
    by_name: BTreeMap<String, histogram::Merger>,
}

impl FigureMergers {
    /// Adds one cell's value.
    pub fn add(&mut self, stored: Option<&[u8]>) -> Result<(), String> {
        let Some(bytes) = stored else {
            return Ok(());
        };
        for (name, hist) in decode(bytes)? {
            self.by_name
                .entry(name.to_owned())
                .or_default()
                .add_encoded(hist)?;
        }
        Ok(())
    }

    /// The merged value to store (unknown figures included), `None` when no cell had any.
    pub fn finish_encoded(self) -> Result<Option<Vec<u8>>, String> {
        if self.by_name.is_empty() {
            return Ok(None);
        }
        let mut entries = Vec::with_capacity(self.by_name.len());
        for (name, merger) in self.by_name {
            entries.push((name, histogram::encode(&merger.finish()?)));
        }
        Ok(Some(encode(
            entries.iter().map(|(n, h)| (n.as_str(), h.as_slice())),
        )))
    }

    /// The merged histograms of the figures this replica knows (what a report shows).
    pub fn finish_known(self) -> Result<BTreeMap<Figure, Histogram<u64>>, String> {
        let mut known = BTreeMap::new();
        for (name, merger) in self.by_name {
            if let Ok(figure) = name.parse::<Figure>() {
                known.insert(figure, merger.finish()?);
            }
        }
        Ok(known)
    }
}

const VERSION: u8 = 1;

fn encode<'a>(entries: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let mut out = vec![VERSION];
    for (name, hist) in entries {
        // Names are our own wire names, a few ASCII letters.
        let name = &name.as_bytes()[..name.len().min(u8::MAX as usize)];
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.extend_from_slice(&(hist.len() as u32).to_be_bytes());
        out.extend_from_slice(hist);
    }
    out
}

/// The (name, encoded histogram) entries of a stored value.
fn decode(bytes: &[u8]) -> Result<Vec<(&str, &[u8])>, String> {
    let corrupt = |why: &str| Err(format!("corrupt figures value: {why}"));
    let Some((&version, mut rest)) = bytes.split_first() else {
        return corrupt("empty");
    };
    if version != VERSION {
        return corrupt(&format!("version {version}"));
    }
    let mut entries = Vec::new();
    while let Some((&name_len, after)) = rest.split_first() {
        let name_len = name_len as usize;
        if after.len() < name_len + 4 {
            return corrupt("truncated entry");
        }
        let (name, after) = after.split_at(name_len);
        let Ok(name) = std::str::from_utf8(name) else {
            return corrupt("a name is not UTF-8");
        };
        let (len, after) = after.split_at(4);
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if after.len() < len {
            return corrupt("truncated histogram");
        }
        let (hist, after) = after.split_at(len);
        entries.push((name, hist));
        rest = after;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(figures: &Figures, stored: Option<&[u8]>) -> Vec<u8> {
        let mut value = stored.map(<[u8]>::to_vec);
        figures.merge_into(&mut value).unwrap();
        value.unwrap()
    }

    fn load(idle: &[u64], loaded: &[u64]) -> Measurement {
        Measurement {
            status: Some(200),
            bytes: 20_000_000,
            throughput: Some(lastmile_protocol::ThroughputSummary {
                connections: 4,
                requests: 20,
                bytes: 20_000_000,
                duration_us: 10_000_000,
                idle_latency_us: idle.to_vec(),
                loaded_latency_us: loaded.to_vec(),
            }),
            ..Measurement::default()
        }
    }

    #[test]
    fn a_video_session_gives_its_startup_delay_and_stall_time() {
        let m = Measurement {
            status: Some(200),
            video: Some(lastmile_protocol::VideoSummary {
                playlist_url: "http://x/high/index.m3u8".into(),
                bitrate_bps: Some(30_000_000),
                segments: 6,
                played_ms: 6_000,
                startup_us: 5_600_000,
                stalls: 1,
                stall_us: 2_100_000,
            }),
            ..Measurement::default()
        };
        assert_eq!(
            parse(&of_measurement(&m).unwrap()),
            vec![
                (Figure::StallTime, 2_100_000),
                (Figure::StartupDelay, 5_600_000)
            ]
        );
        // Played through: a stall time of 0 is a sample too.
        let mut smooth = m.clone();
        smooth.video.as_mut().unwrap().stall_us = 0;
        assert!(parse(&of_measurement(&smooth).unwrap()).contains(&(Figure::StallTime, 0)));
    }

    #[test]
    fn a_throughput_load_gives_goodput_and_the_median_latencies() {
        let m = load(
            &[41_000, 40_000, 90_000, 40_500, 40_200],
            &[300_000, 250_000, 280_000, 1_000_000],
        );
        let stored = of_measurement(&m).unwrap();
        // 20 MB in 10 s: 16 Mbit/s. Medians: 40.5 ms idle, 280 ms loaded (lower middle).
        assert_eq!(
            parse(&stored),
            vec![
                (Figure::Goodput, 16_000),
                (Figure::IdleLatency, 40_500),
                (Figure::LoadedLatency, 280_000)
            ]
        );
        // The fold reads them from the column, and does not add an http goodput too.
        let r = StoredResult {
            figures: Some(stored),
            bytes: 20_000_000,
            transfer_us: 10_000_000,
            ..stored_result()
        };
        assert_eq!(of_result(&r).len(), 3);
        // No probes answered: no latency figures; a failure or another kind: none.
        assert_eq!(
            parse(&of_measurement(&load(&[], &[])).unwrap()),
            vec![(Figure::Goodput, 16_000)]
        );
        let mut failed = load(&[1], &[2]);
        failed.error = Some(lastmile_protocol::MeasurementError {
            kind: lastmile_protocol::ErrorKind::TotalTimeout,
            message: "x".into(),
        });
        assert_eq!(of_measurement(&failed), None);
        assert_eq!(of_measurement(&Measurement::default()), None);
        // A figure this replica does not know (a newer one wrote it) is skipped.
        assert_eq!(
            parse(r#"{"wobble": 5, "goodput": 7}"#),
            vec![(Figure::Goodput, 7)]
        );
    }

    #[test]
    fn a_udp_stream_gives_its_loss_round_trip_and_jitter() {
        let stream = |sent: u32, rtt_us: Vec<u64>| Measurement {
            udp: Some(lastmile_protocol::UdpSummary {
                sent,
                received: rtt_us.len() as u32,
                lost_up: 0,
                rtt_us,
            }),
            ..Measurement::default()
        };
        assert_eq!(
            parse(&of_measurement(&stream(4, vec![40_000, 42_000, 41_000])).unwrap()),
            // As stored: by name.
            vec![
                (Figure::Jitter, 1_500),
                (Figure::Loss, 250_000),
                (Figure::Rtt, 41_000),
            ]
        );
        // Every probe lost: the loss alone.
        assert_eq!(
            parse(&of_measurement(&stream(50, Vec::new())).unwrap()),
            vec![(Figure::Loss, 1_000_000)]
        );
    }

    fn stored_result() -> StoredResult {
        StoredResult {
            assignment_id: String::new(),
            run_id: String::new(),
            check_id: String::new(),
            agent_id: String::new(),
            received_at: 0,
            started_at: 0,
            late: false,
            status: Some(200),
            bytes: 0,
            error_kind: None,
            error_message: None,
            dns_us: 0,
            connect_us: 0,
            tls_us: 0,
            ttfb_us: 0,
            transfer_us: 0,
            total_us: 0,
            country: String::new(),
            region: String::new(),
            asn: 0,
            connection_class: String::new(),
            remote_addr: None,
            ip_version: None,
            http_version: None,
            bytes_decoded: 0,
            redirects: 0,
            redirect_us: 0,
            page: None,
            redirect_hops: None,
            figures: None,
        }
    }

    #[test]
    fn goodput_is_bytes_over_transfer_time() {
        // 1 MiB in one second: 8,388,608 bits, 8,389 kbit/s.
        assert_eq!(goodput_kbps(1 << 20, 1_000_000), 8_389);
        // 125 kB in 10 ms: 100 Mbit/s.
        assert_eq!(goodput_kbps(125_000, 10_000), 100_000);
        // Beyond the histograms' range: clamped, not wrapped.
        assert_eq!(goodput_kbps(i64::MAX, 1), histogram::MAX_US);
    }

    #[test]
    fn cells_merge_per_figure_and_keep_figures_they_do_not_know() {
        let mut first = Figures::default();
        first.record(Figure::Goodput, 10_000);
        let stored = value(&first, None);
        // A newer replica's figure, by a name this one does not know.
        let mut jitter = histogram::new_histogram();
        jitter.saturating_record(1_500);
        let jitter = histogram::encode(&jitter);
        let mut with_unknown = stored.clone();
        with_unknown.push(6);
        with_unknown.extend_from_slice(b"wobble");
        with_unknown.extend_from_slice(&(jitter.len() as u32).to_be_bytes());
        with_unknown.extend_from_slice(&jitter);

        let mut second = Figures::default();
        second.record(Figure::Goodput, 20_000);
        let merged = value(&second, Some(&with_unknown));
        let entries = decode(&merged).unwrap();
        let names: Vec<&str> = entries.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["goodput", "wobble"]);
        let goodput = histogram::decode(entries[0].1).unwrap();
        assert_eq!(goodput.len(), 2);
        assert_eq!(entries[1].1, &jitter[..]);

        // Many cells summed: unknown figures stored on, known ones shown.
        let mut mergers = FigureMergers::default();
        mergers.add(Some(&merged)).unwrap();
        mergers.add(Some(&stored)).unwrap();
        mergers.add(None).unwrap();
        let mut again = FigureMergers::default();
        again.add(Some(&merged)).unwrap();
        again.add(Some(&stored)).unwrap();
        let known = mergers.finish_known().unwrap();
        assert_eq!(known.len(), 1);
        assert_eq!(known[&Figure::Goodput].len(), 3);
        let rolled = again.finish_encoded().unwrap().unwrap();
        let names: Vec<&str> = decode(&rolled).unwrap().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["goodput", "wobble"]);
    }

    #[test]
    fn nothing_recorded_leaves_the_cell_as_it_was() {
        let empty = Figures::default();
        let mut none = None;
        empty.merge_into(&mut none).unwrap();
        assert_eq!(none, None);
        let mut some = Some(vec![VERSION]);
        empty.merge_into(&mut some).unwrap();
        assert_eq!(some, Some(vec![VERSION]));
        assert_eq!(FigureMergers::default().finish_encoded().unwrap(), None);
    }

    #[test]
    fn a_corrupt_value_is_an_error_not_a_panic() {
        for bad in [
            &[][..],
            &[9][..],
            &[VERSION, 7, b'g'][..],
            &[VERSION, 1, b'x', 0, 0, 0, 9, 1][..],
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}
