//! A video session: what a viewer of an HLS stream (or a DASH presentation, whose MPD
//! [`crate::dash`] reads into the same downloads) on this line would see, start-up
//! delay and stalls, measured against a player's buffer model.
//!
//! A fetch's ttfb and a speed test's goodput do not say whether a stream plays: that
//! depends on the rendition's bitrate, on how the segments' arrivals spread over time
//! and on how much a player buffers before it starts and before it resumes. So the
//! agent plays the stream as a player fetches it and hands the arrival times to a model
//! of the player ([`Player`]), which is pure and tested on its own.
//!
//! **Fetching.** The URL is fetched; an XML body with an `<MPD>` is a DASH
//! presentation, planned by [`crate::dash`] and played as a VOD media playlist is
//! (below), or, live, as [`crate::dash`] says; anything else is parsed as HLS
//! (`m3u8-rs`). A master playlist's
//! variant with the highest `BANDWIDTH` at or under the task's `max_bitrate_kbps` is
//! chosen (none at or under it: the lowest; no limit: the highest; I-frame-only
//! variants are never chosen), and its media playlist fetched; a media playlist given
//! directly is played as it is. URIs resolve against the final URL of the playlist that
//! names them. A media playlist with `#EXT-X-ENDLIST` (video on demand, or an event
//! that has ended) is played from its first segment; one without is a live stream (an
//! `EVENT` still going on is one too) and played live (below). A body that is not a
//! playlist, an I-frame playlist, a VOD playlist without segments and a byte range
//! without an offset that follows no range of its resource fail as `playlist_invalid`.
//! **Byte ranges** (`#EXT-X-BYTERANGE`, an `#EXT-X-MAP`'s `BYTERANGE`: segments that
//! are parts of one file) are asked for with a `Range` header, on every hop; the
//! answer must be `206` with exactly the range's bytes, and a server that sends the
//! whole file (`200`) fails the session (`http`) before its body is read, since no
//! player can play that playlist from it. Segments are downloaded in
//! order, one at a time and back to back, as hls.js and ExoPlayer fetch a rendition,
//! until they cover `play_ms` of media (or the playlist ends; at most
//! [`MAX_VIDEO_SEGMENTS`]); an `#EXT-X-MAP` initialisation section is fetched before
//! the first segment that needs it, counted in the bytes and the transfer, with no
//! media. Not fetched: keys (nothing is decrypted), alternative renditions
//! (`#EXT-X-MEDIA` audio or subtitles), and no switching between variants: the model
//! measures one rendition, the one a check names by its bitrate.
//!
//! **Live streams** are played as RFC 8216 says a client plays them. Playback starts
//! at the last segment that starts at least three target durations before the end of
//! the first playlist that lists any ([`live_start`], section 6.3.3; the first segment
//! when the playlist is shorter; hls.js's `liveSyncDurationCount` of 3 does the same),
//! and the segments after it are fetched in order of their media sequence numbers,
//! back to back while the playlist lists them. When the next one is not listed yet,
//! the media playlist (its URL as the master named it, redirects followed again) is
//! reloaded ([`reload_after`], section 6.3.4): a target duration after the last load
//! began when that load changed the playlist (the first load counts as a change), half
//! of one when it did not, until the next segment appears. That is how a live stream
//! stalls besides a slow line: a segment the origin has not published yet when the
//! buffer runs dry arrives late, and the same [`Player`] counts the wait as a stall.
//! So a live session takes about `play_ms` of real time (the media is published in real
//! time), less what was already listed before the live point, still bounded by the
//! time limit and `max_bytes`; every reload's bytes count in `bytes`. Failures of a
//! live session: a next segment that left the playlist before it was fetched (its
//! number is below the reloaded playlist's `#EXT-X-MEDIA-SEQUENCE`: the session fell a
//! whole window behind the live edge) and a stream that stops advancing (more reloads
//! than `play_ms` / (target duration / 2) + 4, [`max_reloads`], which a stream
//! published in real time never needs) are `http`: like a response that broke off, the
//! stream stopped serving what the session was playing, and `playlist_invalid` would
//! blame a playlist that was valid at every load. A live stream that ends
//! (`#EXT-X-ENDLIST` appears) ends the session with its last listed segment. A live
//! playlist without `#EXT-X-TARGETDURATION` cannot be reloaded and is
//! `playlist_invalid`. The result is a VOD session's (the protocol does not tell them
//! apart, and the figures are derived the same way): the start-up delay runs from the
//! first request, so it includes the wait for the live point's segments to be
//! published, and `segments` and `played_ms` count from the live point.
//!
//! **Connections.** Everything goes through the engine's steps: each host is resolved
//! once per session, every address passes the target guard, and an origin (scheme,
//! host, port) gets one connection, kept alive and reused by each of its requests (TCP,
//! TLS, HTTP/2 when ALPN agrees); a request to another origin opens a guarded
//! connection of its own, and one the server closed is replaced. Redirects are
//! followed for every request as `measure` follows them (up to the task's
//! `max_redirects`, each hop through the guard, `too_many_redirects` past it), over the
//! session's connections; they are not listed in the result's `redirects`. Every
//! final status must pass the task's expectations (empty: 2xx or 3xx);
//! `body_contains` does not apply. Bodies are asked for with
//! `Accept-Encoding: identity`, so `bytes` and `bytes_decoded` are the same, every
//! playlist and segment body byte. `max_bytes` bounds the whole session
//! (`body_too_large` past it) and the time limit too (`total_timeout`, or the step the
//! session was in). Every connection ends with the session.
//!
//! **The player model** (the constants are ExoPlayer's defaults, so the figures read
//! like a common Android or TV player's): a segment's media is in the buffer the moment
//! its last byte arrived. Playback starts once [`VIDEO_STARTUP_BUFFER_MS`] of media is
//! buffered, or all the media the session will play is; the start-up delay runs from
//! the session's first request to that moment. Media then plays in real time; when
//! the buffer runs dry before the next segment arrives, playback stalls (one stall)
//! until [`VIDEO_REBUFFER_MS`] is buffered again or all the rest is, and the stall time
//! is the sum of those waits. The session ends when `play_ms` of media has played (the
//! playlist's media, if shorter). Playback after the last download is computed, not
//! waited for, since nothing can stall once everything is buffered: a VOD session takes
//! as long as its downloads, not as its media (a live one as long as its media takes
//! to be published, see above).
//!
//! **The result's phases**: `dns`, `connect`, `tls` and `ttfb` are the first
//! request's (the URL's, its first hop when it redirects), `transfer` runs from the
//! first segment's (or initialisation section's) first byte to the last segment's last
//! byte (for a live stream, the waits for segments to be published and the reloads
//! between are in it), and `total` from the start to that last byte (to the failure, for a session
//! that failed). `status`, `remote_addr`, `ip_version` and `http_version` describe the
//! media playlist's response (before it arrived, the last response that did); a
//! segment that fails names its URL in the error. A failed session's summary says what
//! the viewer saw until the failure: the segments that arrived, playback to that
//! moment, a stall in progress counted to it, and `startup_us` 0 when playback never
//! started (`played_ms` is then 0 too).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Response};
use lastmile_protocol::{
    ErrorKind, Measurement, MeasurementError, Timings, VideoSummary, VideoTask, MAX_VIDEO_PLAY_MS,
    MAX_VIDEO_SEGMENTS, VIDEO_REBUFFER_MS, VIDEO_STARTUP_BUFFER_MS,
};
use m3u8_rs::{MediaPlaylist, Playlist, VariantStream};
use url::Url;

use crate::connection::{Conn, Dialer, First, Tasks};
use crate::dash;
use crate::measure::{
    fail, micros, parse_task_url, status_failure, Engine, Expectations, Stage, Target,
};

impl Engine {
    /// Plays the HLS stream at `url` for `task.play_ms` of media as a player fetches it
    /// and reports the session with its start-up delay and stalls (see the module's
    /// doc). Statuses must pass `expect.status`; `expect.max_bytes` bounds the
    /// session's bytes and `expect.timeout` its time. Never fails: a failure is a
    /// measurement with an error kind and what the session measured until then.
    pub async fn measure_video(
        &self,
        url: &str,
        expect: &Expectations,
        task: VideoTask,
    ) -> Measurement {
        let mut session = Session::new(self.clone(), Instant::now());
        let outcome = tokio::time::timeout(expect.timeout, session.go(url, expect, task)).await;
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(session.stage.timed_out(expect.timeout)),
        };
        let ended = Instant::now();
        // Every connection of this session ends with it.
        session.tasks.shut_down().await;
        session.into_measurement(error, ended)
    }
}

/// Refuses a session the agent cannot carry out as asked.
fn check_task(task: VideoTask) -> Result<(), MeasurementError> {
    if !(1_000..=MAX_VIDEO_PLAY_MS).contains(&task.play_ms) {
        return Err(fail(
            ErrorKind::InvalidTask,
            format!(
                "a video session plays 1,000 to {MAX_VIDEO_PLAY_MS} ms of media, not {}",
                task.play_ms
            ),
        ));
    }
    Ok(())
}

/// The variant a player limited to `max_bitrate_kbps` plays ([`choose_by_bandwidth`]).
/// I-frame-only variants (trick play) and variants without a URI are never chosen.
pub fn choose_variant(
    variants: &[VariantStream],
    max_bitrate_kbps: Option<u64>,
) -> Option<&VariantStream> {
    let playable: Vec<&VariantStream> = variants
        .iter()
        .filter(|v| !v.is_i_frame && !v.uri.trim().is_empty())
        .collect();
    let bandwidths: Vec<u64> = playable.iter().map(|v| v.bandwidth).collect();
    choose_by_bandwidth(&bandwidths, max_bitrate_kbps).map(|i| playable[i])
}

/// Which of the renditions of these `bandwidths` (bit/s) a player limited to
/// `max_bitrate_kbps` plays, HLS variant or DASH representation: the highest at or
/// under the limit, else the lowest; without a limit the highest.
pub fn choose_by_bandwidth(bandwidths: &[u64], max_bitrate_kbps: Option<u64>) -> Option<usize> {
    let all = || bandwidths.iter().copied().enumerate();
    match max_bitrate_kbps {
        None => all().max_by_key(|(_, b)| *b),
        Some(kbps) => {
            let cap = kbps.saturating_mul(1_000);
            all()
                .filter(|(_, b)| *b <= cap)
                .max_by_key(|(_, b)| *b)
                .or_else(|| all().min_by_key(|(_, b)| *b))
        }
    }
    .map(|(i, _)| i)
}

/// A playlist body, parsed; anything else is `playlist_invalid`.
fn parse_playlist(body: &[u8], url: &Url) -> Result<Playlist, MeasurementError> {
    m3u8_rs::parse_playlist_res(body).map_err(|_| {
        fail(
            ErrorKind::PlaylistInvalid,
            format!(
                "{url} is not an HLS playlist ({} bytes that do not parse as #EXTM3U)",
                body.len()
            ),
        )
    })
}

pub(crate) fn invalid(message: String) -> MeasurementError {
    fail(ErrorKind::PlaylistInvalid, message)
}

/// What a session downloads, in order.
#[derive(Debug, PartialEq)]
pub(crate) struct Plan {
    pub pieces: Vec<Piece>,
    /// The media the session plays: `play_ms`, or all the segments', if less; µs.
    pub media_us: u64,
}

/// One download: a segment with its media, or an initialisation section (none).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Piece {
    pub url: Url,
    pub media_us: Option<u64>,
    /// The bytes of `url` it is, when it is part of a file (HLS `#EXT-X-BYTERANGE`,
    /// DASH `mediaRange`).
    pub range: Option<ByteRange>,
}

/// A part of a file, asked for with `Range: bytes=offset-(offset+length-1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ByteRange {
    pub offset: u64,
    pub length: u64,
}

impl ByteRange {
    /// The `Range` header's value.
    fn header(self) -> String {
        format!(
            "bytes={}-{}",
            self.offset,
            self.offset.saturating_add(self.length.max(1) - 1)
        )
    }
}

/// Refuses what no session plays, VOD or live: I-frame playlists (trick play).
fn refuse_unplayable(media: &MediaPlaylist, base: &Url) -> Result<(), MeasurementError> {
    if media.i_frames_only {
        return Err(invalid(format!(
            "{base} is an I-frame playlist (trick play), not one a player plays"
        )));
    }
    Ok(())
}

/// Each segment's byte range in `media` (`#EXT-X-BYTERANGE:<n>[@<o>]`; `None`: the
/// whole resource). Without `@<o>` a range starts after the previous segment's, which
/// must then be a range of the same resource (RFC 8216 section 4.3.2.2).
fn segment_ranges(
    media: &MediaPlaylist,
    base: &Url,
) -> Result<Vec<Option<ByteRange>>, MeasurementError> {
    let mut previous: Option<(&str, u64)> = None;
    let mut ranges = Vec::with_capacity(media.segments.len());
    for segment in &media.segments {
        let range = match &segment.byte_range {
            None => None,
            Some(r) => {
                let offset = match (r.offset, previous) {
                    (Some(offset), _) => offset,
                    (None, Some((uri, end))) if uri == segment.uri => end,
                    (None, _) => {
                        return Err(invalid(format!(
                            "{base}: the byte range of {} has no offset and does not follow \
                             a range of the same resource",
                            segment.uri
                        )))
                    }
                };
                Some(ByteRange {
                    offset,
                    length: r.length,
                })
            }
        };
        previous = range.map(|r| (segment.uri.as_str(), r.offset.saturating_add(r.length)));
        ranges.push(range);
    }
    Ok(ranges)
}

/// An `#EXT-X-MAP`'s byte range (`BYTERANGE="<n>[@<o>]"`, the offset 0 when absent).
fn map_range(map: &m3u8_rs::Map) -> Option<ByteRange> {
    map.byte_range.as_ref().map(|r| ByteRange {
        offset: r.offset.unwrap_or(0),
        length: r.length,
    })
}

/// The longest URL a playlist or MPD may make the agent fetch, bytes: browsers and
/// CDNs refuse far shorter ones, and every segment of a plan keeps its URL, so a
/// template of a megabyte would take gigabytes.
pub(crate) const MAX_URL_BYTES: usize = 8 * 1024;

/// `url`, a URL a playlist or MPD (`what`) made, unless no player would fetch it: one
/// that is not `http` or `https`, or longer than [`MAX_URL_BYTES`] (`playlist_invalid`:
/// the playlist is at fault, not the check's task).
pub(crate) fn fetchable(url: Url, what: &str) -> Result<Url, MeasurementError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "{what} names a {}: URL; only http and https are fetched",
            url.scheme()
        )));
    }
    if url.as_str().len() > MAX_URL_BYTES {
        return Err(invalid(format!(
            "{what} makes a URL of {} bytes (at most {MAX_URL_BYTES})",
            url.as_str().len()
        )));
    }
    Ok(url)
}

/// `uri` as a playlist at `base` names it.
fn join(base: &Url, uri: &str) -> Result<Url, MeasurementError> {
    let joined = base
        .join(uri.trim())
        .map_err(|e| invalid(format!("{base} names an invalid URI {uri:?}: {e}")))?;
    fetchable(joined, &format!("{base}: a URI"))
}

/// A segment's media (`#EXTINF` seconds), µs; a negative or unreadable duration
/// carries none.
fn extinf_us(duration: f32) -> u64 {
    (f64::from(duration) * 1e6).round().max(0.0) as u64
}

/// The downloads that play `play_ms` of `media` (whose URL is `base`, ended by
/// `#EXT-X-ENDLIST`), after checking that it can be played.
fn plan(media: &MediaPlaylist, base: &Url, play_ms: u64) -> Result<Plan, MeasurementError> {
    if media.i_frames_only {
        return Err(invalid(format!(
            "{base} is an I-frame playlist (trick play), not one a player plays"
        )));
    }
    if media.segments.is_empty() {
        return Err(invalid(format!("{base} lists no segments")));
    }
    refuse_unplayable(media, base)?;
    let ranges = segment_ranges(media, base)?;
    let join = |uri: &str| join(base, uri);
    let play_us = play_ms.saturating_mul(1_000);
    let mut pieces = Vec::new();
    let mut covered = 0u64;
    let mut init: Option<(&str, Option<ByteRange>)> = None;
    for (segment, range) in media.segments.iter().zip(ranges).take(MAX_VIDEO_SEGMENTS) {
        if covered >= play_us {
            break;
        }
        if let Some(map) = &segment.map {
            let section = (map.uri.as_str(), map_range(map));
            if init != Some(section) {
                pieces.push(Piece {
                    url: join(&map.uri)?,
                    media_us: None,
                    range: section.1,
                });
                init = Some(section);
            }
        }
        let media_us = extinf_us(segment.duration);
        pieces.push(Piece {
            url: join(&segment.uri)?,
            media_us: Some(media_us),
            range,
        });
        covered = covered.saturating_add(media_us);
    }
    if covered == 0 {
        return Err(invalid(format!(
            "{base}'s segments carry no media (every #EXTINF is 0)"
        )));
    }
    Ok(Plan {
        pieces,
        media_us: covered.min(play_us),
    })
}

/// Where a live session starts in a playlist whose segments last `durations_us`, for
/// a target duration of `target_us` (RFC 8216 section 6.3.3: not less than three
/// target durations from the end): the index of the last segment that starts at
/// least that far from the end, or the first when all of them are shorter.
pub fn live_start(durations_us: &[u64], target_us: u64) -> usize {
    let edge = target_us.saturating_mul(3);
    let mut from_end = 0u64;
    for (index, duration) in durations_us.iter().enumerate().rev() {
        from_end = from_end.saturating_add(*duration);
        if from_end >= edge {
            return index;
        }
    }
    0
}

/// How long after a load of a live playlist began the next reload may begin (RFC
/// 8216 section 6.3.4): the target duration after a load that changed the playlist (or
/// the first load), half of it after one that did not.
pub fn reload_after(target: Duration, changed: bool) -> Duration {
    if changed {
        target
    } else {
        target / 2
    }
}

/// The most reloads a live session of `play_ms` makes: one every half target duration
/// over `play_ms`, plus a few for the start and late publications. A stream published
/// in real time needs about one a target duration.
pub fn max_reloads(play_ms: u64, target: Duration) -> u64 {
    let half_ms = (target.as_millis() / 2).max(1) as u64;
    play_ms / half_ms + 4
}

/// Times a live DASH segment that 404s is asked for again before the session fails.
const PUBLISH_RETRIES: u32 = 3;

/// The longest a live DASH session waits for a listed segment to be published:
/// two segments (at least 2 s, at most 30 s). A segment is chosen next once the one
/// before it is fetched, so a well-formed presentation publishes it within a segment;
/// one announced later is an MPD that contradicts itself (`playlist_invalid`), not a
/// stall of the line.
fn max_publish_wait_us(segment_us: u64) -> i64 {
    i64::try_from(segment_us.saturating_mul(2))
        .unwrap_or(i64::MAX)
        .clamp(2_000_000, 30_000_000)
}

/// The largest playlist, MPD (or segment index) kept to be read, bytes: a parsed MPD
/// takes many times its text in memory, and no real manifest comes near it.
const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// A `UTCTiming` source's answer is read for at most this long...
const TIME_SOURCE_WAIT: Duration = Duration::from_secs(2);
/// ...and at most this many bytes of it.
const MAX_TIME_BYTES: u64 = 1_024;

/// Now on the wall clock, µs since the Unix epoch: a live DASH presentation's segments
/// are published at moments of its origin's clock, which the agent's (kept by NTP)
/// stands for.
fn unix_now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The segment a live DASH session fetched last, µs on the presentation's timeline (from `availabilityStartTime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Played {
    start_us: u64,
    end_us: u64,
}

/// The step of a live DASH session that last fetched `played` (`None` before it chose
/// where to start) in `view`, at `now_us` (µs since the Unix epoch). The start is
/// chosen as HLS's: among the segments available now, the one `delay_us` before the
/// end of the last ([`live_start`]). The next segment is the first that starts after
/// the last one started and where it ended.
fn dash_step(view: &dash::LiveView, played: Option<Played>, now_us: i64) -> LiveStep {
    let Some(played) = played else {
        let available: Vec<u64> = view
            .segments
            .iter()
            .take_while(|s| s.available_at_us <= now_us)
            .map(|s| s.media_us)
            .collect();
        if available.is_empty() {
            return if view.dynamic {
                LiveStep::Reload
            } else {
                LiveStep::Ended
            };
        }
        return LiveStep::Fetch(live_start(&available, view.delay_us / 3));
    };
    // Start times are rounded to µs from the timeline's ticks: a segment is the next
    // one when it starts within a quarter segment of where the last one ended, and
    // after the last one started (segments shorter than the slack never lead back).
    let next = played.end_us;
    let slack = view.segment_us / 4;
    if let Some(first) = view.segments.first() {
        if first.start_us > next.saturating_add(slack) {
            return LiveStep::ScrolledOff(first.start_us);
        }
    }
    match view
        .segments
        .iter()
        .position(|s| s.start_us > played.start_us && s.start_us.saturating_add(slack) >= next)
    {
        Some(index) => LiveStep::Fetch(index),
        None if view.dynamic => LiveStep::Reload,
        None => LiveStep::Ended,
    }
}

/// What a live session does next with the playlist it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LiveStep {
    /// Fetch the segment at this index of the playlist.
    Fetch(usize),
    /// The next segment is not listed yet: reload the playlist.
    Reload,
    /// The stream ended (`#EXT-X-ENDLIST`) before the next segment.
    Ended,
    /// The next segment left the playlist before it was fetched; it now starts at
    /// this media sequence number.
    ScrolledOff(u64),
}

/// The step for the segment numbered `next` (its media sequence number; `None`
/// before the session has chosen its start) in `playlist`, whose target duration is
/// `target_us`.
fn live_step(playlist: &MediaPlaylist, next: Option<u64>, target_us: u64) -> LiveStep {
    let first = playlist.media_sequence;
    let listed = playlist.segments.len() as u64;
    let index = match next {
        None if listed > 0 => {
            let durations: Vec<u64> = playlist
                .segments
                .iter()
                .map(|s| extinf_us(s.duration))
                .collect();
            return LiveStep::Fetch(live_start(&durations, target_us));
        }
        None => 0,
        Some(next) if next < first => return LiveStep::ScrolledOff(first),
        Some(next) => next - first,
    };
    if index < listed {
        LiveStep::Fetch(index as usize)
    } else if playlist.end_list {
        LiveStep::Ended
    } else {
        LiveStep::Reload
    }
}

/// Refuses a live playlist no session plays: those of [`refuse_unplayable`], one whose
/// byte ranges cannot be placed ([`segment_ranges`]), and one without a target duration
/// (it cannot be reloaded) or with one of hours. Returns its segments' byte ranges.
fn check_live(
    media: &MediaPlaylist,
    base: &Url,
) -> Result<Vec<Option<ByteRange>>, MeasurementError> {
    refuse_unplayable(media, base)?;
    let ranges = segment_ranges(media, base)?;
    if media.target_duration == 0 {
        return Err(invalid(format!(
            "{base} is a live playlist without #EXT-X-TARGETDURATION: it cannot be reloaded"
        )));
    }
    if media.target_duration > MAX_LIVE_TARGET_DURATION_S {
        return Err(invalid(format!(
            "{base} is a live playlist whose #EXT-X-TARGETDURATION is {} s (a live \
             stream's segments last seconds; at most {MAX_LIVE_TARGET_DURATION_S} s)",
            media.target_duration
        )));
    }
    Ok(ranges)
}

/// The longest target duration of a live playlist played, seconds: longer than any
/// session lasts, and the agent's reload timer adds it to the present.
const MAX_LIVE_TARGET_DURATION_S: u64 = 3_600;

/// A live media playlist as last loaded.
struct Loaded {
    /// Its final URL, which its URIs resolve against.
    base: Url,
    playlist: MediaPlaylist,
    /// The body, to see whether a reload changed it.
    body: Vec<u8>,
    /// When its request began: reloads are timed from it.
    began: Instant,
    /// Its segments' byte ranges, placed once a load (`None`: the whole resource).
    ranges: Vec<Option<ByteRange>>,
}

impl Loaded {
    /// A load of a live playlist, refused as [`check_live`] says.
    fn new(
        base: Url,
        playlist: MediaPlaylist,
        body: Vec<u8>,
        began: Instant,
    ) -> Result<Loaded, MeasurementError> {
        let ranges = check_live(&playlist, &base)?;
        Ok(Loaded {
            base,
            playlist,
            body,
            began,
            ranges,
        })
    }
}

/// The player model of the module's doc. Pure: it is told when each segment's last
/// byte arrived (µs since the session started, in order) and how much media it
/// carries, and says what a viewer saw.
#[derive(Debug, Clone)]
pub struct Player {
    /// The media the session plays, µs.
    media_us: u64,
    /// Media buffered before playback starts, and before it resumes after a stall.
    startup_buffer_us: u64,
    rebuffer_us: u64,
    buffered_us: u64,
    last_arrival_us: u64,
    state: State,
    startup_us: Option<u64>,
    stalls: u32,
    stall_us: u64,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Not playing since `since_us`, at media position `position_us`: before playback
    /// started, or in a stall (`stalled`).
    Waiting {
        since_us: u64,
        position_us: u64,
        stalled: bool,
    },
    /// Playing since `since_us`, from media position `from_us`.
    Playing { since_us: u64, from_us: u64 },
}

/// What a viewer saw of a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Playback {
    /// From the session's start until playback started, µs (`None`: it never did).
    pub startup_us: Option<u64>,
    /// Times playback stopped for want of media after it started.
    pub stalls: u32,
    /// Time spent stalled, µs.
    pub stall_us: u64,
    /// Media played, µs.
    pub played_us: u64,
}

impl Player {
    /// A player for a session that plays `media_us` of media, with the protocol's
    /// buffers ([`VIDEO_STARTUP_BUFFER_MS`], [`VIDEO_REBUFFER_MS`]).
    pub fn new(media_us: u64) -> Player {
        Player {
            media_us,
            startup_buffer_us: VIDEO_STARTUP_BUFFER_MS * 1_000,
            rebuffer_us: VIDEO_REBUFFER_MS * 1_000,
            buffered_us: 0,
            last_arrival_us: 0,
            state: State::Waiting {
                since_us: 0,
                position_us: 0,
                stalled: false,
            },
            startup_us: None,
            stalls: 0,
            stall_us: 0,
        }
    }

    /// A segment carrying `media_us` of media arrived whole at `at_us` (never before
    /// the previous one: an earlier time counts as the previous one's).
    pub fn arrived(&mut self, at_us: u64, media_us: u64) {
        let at = at_us.max(self.last_arrival_us);
        self.last_arrival_us = at;
        if let State::Playing { since_us, from_us } = self.state {
            // The buffer ran dry before this segment came: a stall, unless the media
            // had all played (the session was over).
            let dry_at = since_us + (self.buffered_us - from_us);
            if at > dry_at && self.buffered_us < self.media_us {
                self.stalls += 1;
                self.state = State::Waiting {
                    since_us: dry_at,
                    position_us: self.buffered_us,
                    stalled: true,
                };
            }
        }
        self.buffered_us = self.buffered_us.saturating_add(media_us);
        self.resume(at);
    }

    /// The session's media turned out shorter than the player was made for (a live
    /// stream ended, or the segment limit came first): `media_us`, never less than
    /// what is buffered. A wait for a buffer that can no longer fill ends at the last
    /// arrival.
    pub fn shorten(&mut self, media_us: u64) {
        self.media_us = self.media_us.min(media_us.max(self.buffered_us));
        if self.buffered_us > 0 {
            self.resume(self.last_arrival_us);
        }
    }

    /// Starts (or resumes) playback at `at_us` if it waits and the buffer it waits for
    /// is in.
    fn resume(&mut self, at: u64) {
        if let State::Waiting {
            since_us,
            position_us,
            stalled,
        } = self.state
        {
            let need = if stalled {
                self.rebuffer_us
                    .min(self.media_us.saturating_sub(position_us))
            } else {
                self.startup_buffer_us.min(self.media_us)
            };
            if self.buffered_us.saturating_sub(position_us) >= need {
                if stalled {
                    self.stall_us += at - since_us;
                } else {
                    self.startup_us = Some(at);
                }
                self.state = State::Playing {
                    since_us: at,
                    from_us: position_us,
                };
            }
        }
    }

    /// The session once every download arrived: the rest of the media plays out
    /// without a stall (nothing is left to wait for).
    pub fn ended(&self) -> Playback {
        match self.state {
            State::Playing { .. } if self.buffered_us >= self.media_us => Playback {
                startup_us: self.startup_us,
                stalls: self.stalls,
                stall_us: self.stall_us,
                played_us: self.media_us,
            },
            // Not all of the session's media came: it ended with its last segment.
            _ => self.cut(self.last_arrival_us),
        }
    }

    /// The session cut short at `at_us` (it failed): playback until then, a stall in
    /// progress counted to that moment.
    pub fn cut(&self, at_us: u64) -> Playback {
        let at = at_us.max(self.last_arrival_us);
        let mut seen = Playback {
            startup_us: self.startup_us,
            stalls: self.stalls,
            stall_us: self.stall_us,
            played_us: 0,
        };
        match self.state {
            State::Playing { since_us, from_us } => {
                let reached = from_us + (at - since_us);
                let playable = self.buffered_us.min(self.media_us);
                if reached <= playable || self.buffered_us >= self.media_us {
                    seen.played_us = reached.min(playable);
                } else {
                    let dry_at = since_us + (self.buffered_us - from_us);
                    seen.stalls += 1;
                    seen.stall_us += at - dry_at;
                    seen.played_us = self.buffered_us;
                }
            }
            State::Waiting {
                since_us,
                position_us,
                stalled,
            } => {
                if stalled {
                    seen.stall_us += at - since_us;
                }
                seen.played_us = position_us;
            }
        }
        seen
    }
}

/// One origin's guarded connection within a session.
struct Origin {
    dialer: Dialer,
    /// The kept-alive connection, between requests.
    conn: Option<Conn>,
}

/// One session as far as it got: what the result is made of, kept outside the future
/// the time limit may cut short.
struct Session {
    engine: Engine,
    start: Instant,
    /// The current request's step, which names a timeout.
    stage: Stage,
    tasks: Tasks,
    origins: HashMap<String, Origin>,
    /// The first request: its name lookup (µs) and connection.
    first: Option<(u64, First)>,
    /// The last final (not redirected) response, and the media playlist's.
    last: Option<First>,
    media_playlist: Option<First>,
    playlist_url: Option<String>,
    bitrate_bps: Option<u64>,
    bytes: u64,
    /// Set once the segments' downloads begin.
    downloading: bool,
    transfer_from: Option<Instant>,
    last_byte: Option<Instant>,
    last_segment_byte: Option<Instant>,
    segments: u32,
    player: Option<Player>,
    /// The origin's clock minus the agent's, µs (a live DASH session's `UTCTiming`).
    clock_offset_us: i64,
    /// The wall clock at `start`, µs since the Unix epoch: the session's time of day
    /// runs on from it by the monotonic clock, so a clock stepped meanwhile moves no
    /// segment's publication.
    wall_at_start_us: i64,
}

impl Session {
    fn new(engine: Engine, start: Instant) -> Session {
        Session {
            engine,
            start,
            stage: Stage::Starting,
            tasks: Tasks::default(),
            origins: HashMap::new(),
            first: None,
            last: None,
            media_playlist: None,
            playlist_url: None,
            bitrate_bps: None,
            bytes: 0,
            downloading: false,
            transfer_from: None,
            last_byte: None,
            last_segment_byte: None,
            segments: 0,
            player: None,
            clock_offset_us: 0,
            wall_at_start_us: unix_now_us()
                .saturating_sub(i64::try_from(start.elapsed().as_micros()).unwrap_or(0)),
        }
    }

    /// The playlists, then the segments, each segment handed to the player.
    async fn go(
        &mut self,
        url: &str,
        expect: &Expectations,
        task: VideoTask,
    ) -> Result<(), MeasurementError> {
        let url = parse_task_url(url)?;
        Target::of(&url)?;
        check_task(task)?;

        let mut began = Instant::now();
        let (fetched, body) = self.get(&url, expect, true).await?;
        if dash::is_mpd(&body) {
            let mpd = dash::parse(&body, &fetched)?;
            self.media_playlist = self.last;
            self.playlist_url = Some(url.to_string());
            if dash::is_live(&mpd) {
                self.read_origin_clock(dash::time_source(&mpd, &fetched), expect)
                    .await;
                let view = dash::live_view(&mpd, &fetched, task, self.origin_now_us(), None)?;
                return self.play_live_dash(&url, view, began, expect, task).await;
            }
            let dash = dash::plan(&mpd, &fetched, task)?;
            self.bitrate_bps = dash.bitrate_bps;
            let mut plan = dash.plan;
            if let Some(indexed) = dash.indexed {
                // The index first, as players read it, before any media.
                let (_, index) = self
                    .get_range(&indexed.url, expect, true, Some(indexed.index))
                    .await?;
                plan.pieces.extend(dash::indexed_pieces(&indexed, &index)?);
                let media: u64 = plan.pieces.iter().filter_map(|p| p.media_us).sum();
                plan.media_us = media.min(task.play_ms.saturating_mul(1_000));
            }
            return self.play(plan, expect).await;
        }
        let first = parse_playlist(&body, &fetched).map_err(|_| {
            invalid(format!(
                "{fetched} is neither an HLS playlist nor a DASH MPD ({} bytes that start \
                 with neither #EXTM3U nor an <MPD> document)",
                body.len()
            ))
        })?;
        let (media_url, media_base, media, body) = match first {
            Playlist::MediaPlaylist(media) => (url, fetched, media, body),
            Playlist::MasterPlaylist(master) => {
                let variant =
                    choose_variant(&master.variants, task.max_bitrate_kbps).ok_or_else(|| {
                        invalid(format!(
                            "{fetched} is a master playlist without a variant to play"
                        ))
                    })?;
                let media_url = fetched.join(variant.uri.trim()).map_err(|e| {
                    invalid(format!(
                        "{fetched} names an invalid variant URI {:?}: {e}",
                        variant.uri
                    ))
                })?;
                self.bitrate_bps = Some(variant.bandwidth);
                self.playlist_url = Some(media_url.to_string());
                began = Instant::now();
                let (media_base, body) = self.get(&media_url, expect, true).await?;
                match parse_playlist(&body, &media_base)? {
                    Playlist::MediaPlaylist(media) => (media_url, media_base, media, body),
                    Playlist::MasterPlaylist(_) => {
                        return Err(invalid(format!(
                            "the variant {media_url} is a master playlist, not a media playlist"
                        )))
                    }
                }
            }
        };
        self.media_playlist = self.last;
        self.playlist_url = Some(media_url.to_string());

        if !media.end_list {
            let loaded = Loaded::new(media_base, media, body, began)?;
            return self.play_live(&media_url, loaded, expect, task).await;
        }
        let plan = plan(&media, &media_base, task.play_ms)?;
        self.play(plan, expect).await
    }

    /// Downloads a VOD session's pieces in order, back to back, each segment handed to
    /// the player as it arrives.
    async fn play(&mut self, plan: Plan, expect: &Expectations) -> Result<(), MeasurementError> {
        self.player = Some(Player::new(plan.media_us));
        self.downloading = true;
        for piece in plan.pieces {
            self.get_range(&piece.url, expect, false, piece.range)
                .await?;
            if let Some(media_us) = piece.media_us {
                self.segment_arrived(media_us);
            }
        }
        Ok(())
    }

    /// The segment just downloaded (its last byte was the last one read), carrying
    /// `media_us`, handed to the player.
    fn segment_arrived(&mut self, media_us: u64) {
        let arrived = self.last_byte.unwrap_or_else(Instant::now);
        self.last_segment_byte = Some(arrived);
        self.segments += 1;
        if let Some(player) = self.player.as_mut() {
            player.arrived(
                micros(arrived.saturating_duration_since(self.start)),
                media_us,
            );
        }
    }

    /// Plays the live media playlist at `url`, loaded first as `loaded` (see the
    /// module's doc): from the live point, segment after segment by media sequence
    /// number, reloading the playlist when the next one is not listed yet.
    async fn play_live(
        &mut self,
        url: &Url,
        mut loaded: Loaded,
        expect: &Expectations,
        task: VideoTask,
    ) -> Result<(), MeasurementError> {
        let target = Duration::from_secs(loaded.playlist.target_duration);
        let target_us = micros(target);
        let play_us = task.play_ms.saturating_mul(1_000);
        self.player = Some(Player::new(play_us));
        let reload_limit = max_reloads(task.play_ms, target);
        let mut reloads = 0u64;
        // The first load counts as one that changed the playlist.
        let mut changed = true;
        let mut next: Option<u64> = None;
        let mut init: Option<(Url, Option<ByteRange>)> = None;
        let mut covered = 0u64;
        while covered < play_us && (self.segments as usize) < MAX_VIDEO_SEGMENTS {
            match live_step(&loaded.playlist, next, target_us) {
                LiveStep::Fetch(index) => {
                    let segments = &loaded.playlist.segments;
                    let segment = &segments[index];
                    let number = loaded.playlist.media_sequence.saturating_add(index as u64);
                    let media_us = extinf_us(segment.duration);
                    let segment_url = join(&loaded.base, &segment.uri)?;
                    let range = loaded.ranges[index];
                    // The initialisation section in effect: the last #EXT-X-MAP at or
                    // before the segment (a live playlist repeats it at its top).
                    let map = segments[..=index]
                        .iter()
                        .rev()
                        .find_map(|s| s.map.as_ref())
                        .map(|m| {
                            Ok::<_, MeasurementError>((join(&loaded.base, &m.uri)?, map_range(m)))
                        })
                        .transpose()?;
                    self.downloading = true;
                    if let Some(map) = map {
                        if init.as_ref() != Some(&map) {
                            self.get_range(&map.0, expect, false, map.1).await?;
                            init = Some(map);
                        }
                    }
                    self.get_range(&segment_url, expect, false, range).await?;
                    self.segment_arrived(media_us);
                    covered = covered.saturating_add(media_us);
                    next = Some(number.saturating_add(1));
                }
                LiveStep::Reload => {
                    reloads += 1;
                    if reloads > reload_limit {
                        return Err(fail(
                            ErrorKind::Http,
                            format!(
                                "the live stream {url} stopped advancing: segment {} was \
                                 still not listed after {reload_limit} reloads",
                                next.map_or_else(|| "0".into(), |n| n.to_string())
                            ),
                        ));
                    }
                    tokio::time::sleep_until((loaded.began + reload_after(target, changed)).into())
                        .await;
                    let began = Instant::now();
                    let (base, body) = self.get(url, expect, true).await?;
                    let playlist = match parse_playlist(&body, &base)? {
                        Playlist::MediaPlaylist(media) => media,
                        Playlist::MasterPlaylist(_) => {
                            return Err(invalid(format!(
                                "{url} became a master playlist when reloaded"
                            )))
                        }
                    };
                    changed = body != loaded.body;
                    loaded = Loaded::new(base, playlist, body, began)?;
                }
                LiveStep::Ended => break,
                LiveStep::ScrolledOff(first) => {
                    return Err(fail(
                        ErrorKind::Http,
                        format!(
                            "segment {} of the live stream {url} scrolled off the playlist \
                             (it now starts at {first}) before it was fetched: the session \
                             fell a whole playlist behind the live edge",
                            next.unwrap_or(0)
                        ),
                    ))
                }
            }
        }
        if covered == 0 {
            return Err(invalid(format!(
                "the live stream {url} ended without a segment with media to play"
            )));
        }
        if let Some(player) = self.player.as_mut() {
            // Ended, or the segment limit: the media is what came.
            player.shorten(covered);
        }
        Ok(())
    }

    /// Plays the live DASH presentation at `url`, first loaded (at `began`) as `view`:
    /// from `delay_us` behind the live edge, segment after segment of the chosen
    /// representation, each fetched once it is available (waited for when it is not
    /// yet), the MPD reloaded when the next segment is not listed yet (see
    /// [`crate::dash`]).
    async fn play_live_dash(
        &mut self,
        url: &Url,
        mut view: dash::LiveView,
        mut began: Instant,
        expect: &Expectations,
        task: VideoTask,
    ) -> Result<(), MeasurementError> {
        let play_us = task.play_ms.saturating_mul(1_000);
        self.player = Some(Player::new(play_us));
        self.bitrate_bps = view.bitrate_bps;
        let reload_limit = max_reloads(task.play_ms, Duration::from_micros(view.segment_us));
        let mut reloads = 0u64;
        // The segment fetched last, by where it is on the presentation's timeline.
        let mut played: Option<Played> = None;
        let mut init: Option<Piece> = None;
        let mut covered = 0u64;
        while covered < play_us && (self.segments as usize) < MAX_VIDEO_SEGMENTS {
            let now = self.origin_now_us();
            match dash_step(&view, played, now) {
                LiveStep::Fetch(index) => {
                    let segment = view.segments[index].clone();
                    let wait_us = segment.available_at_us.saturating_sub(self.origin_now_us());
                    if wait_us > max_publish_wait_us(view.segment_us) {
                        return Err(invalid(format!(
                            "the live presentation {url} lists {} as the next segment but \
                             publishes it only in {:.1} s, far later than a segment",
                            segment.url,
                            wait_us as f64 / 1e6
                        )));
                    }
                    if wait_us > 0 {
                        tokio::time::sleep(Duration::from_micros(wait_us as u64)).await;
                    }
                    self.downloading = true;
                    if let Some(section) = &view.init {
                        if init.as_ref() != Some(section) {
                            self.get_range(&section.url, expect, false, section.range)
                                .await?;
                            init = Some(section.clone());
                        }
                    }
                    self.get_published(&segment.url, expect, view.segment_us)
                        .await?;
                    self.segment_arrived(segment.media_us);
                    covered = covered.saturating_add(segment.media_us);
                    played = Some(Played {
                        start_us: segment.start_us,
                        end_us: segment.start_us.saturating_add(segment.media_us),
                    });
                }
                LiveStep::Reload => {
                    reloads += 1;
                    if reloads > reload_limit {
                        return Err(fail(
                            ErrorKind::Http,
                            format!(
                                "the live presentation {url} stopped advancing: its next \
                                 segment was still not listed after {reload_limit} reloads"
                            ),
                        ));
                    }
                    tokio::time::sleep_until((began + view.reload_after).into()).await;
                    began = Instant::now();
                    let (base, body) = self.get(url, expect, true).await?;
                    if !dash::is_mpd(&body) {
                        return Err(invalid(format!(
                            "{url} was no longer a DASH MPD when reloaded"
                        )));
                    }
                    let mpd = dash::parse(&body, &base)?;
                    let played_to = played.map(|p| p.end_us);
                    view = dash::live_view(&mpd, &base, task, self.origin_now_us(), played_to)?;
                }
                LiveStep::Ended => break,
                LiveStep::ScrolledOff(first_us) => {
                    return Err(fail(
                        ErrorKind::Http,
                        format!(
                            "the segment at {} ms of the live presentation {url} left its \
                             window (it now starts at {} ms) before it was fetched: the \
                             session fell a whole window behind the live edge",
                            played.map_or(0, |p| p.end_us) / 1_000,
                            first_us / 1_000
                        ),
                    ))
                }
            }
        }
        if covered == 0 {
            return Err(invalid(format!(
                "the live presentation {url} ended without a segment with media to play"
            )));
        }
        if let Some(player) = self.player.as_mut() {
            player.shorten(covered);
        }
        Ok(())
    }

    /// Now on the origin's clock, µs since the Unix epoch: the agent's wall clock and
    /// the offset [`Session::read_origin_clock`] found.
    fn origin_now_us(&self) -> i64 {
        self.wall_now_us().saturating_add(self.clock_offset_us)
    }

    /// The agent's time of day, µs since the Unix epoch, as of the session's start and
    /// the monotonic clock since.
    fn wall_now_us(&self) -> i64 {
        let since = i64::try_from(self.start.elapsed().as_micros()).unwrap_or(i64::MAX);
        self.wall_at_start_us.saturating_add(since)
    }

    /// Reads the origin's clock from a live presentation's `UTCTiming` `source` and
    /// keeps its offset to the agent's. A time fetched is taken as of the middle of
    /// its request; a source that fails (or a body that is not a time) leaves the
    /// agent's clock in charge, as players do, rather than failing the session.
    async fn read_origin_clock(&mut self, source: Option<dash::TimeSource>, expect: &Expectations) {
        let offset = match source {
            None => None,
            Some(dash::TimeSource::Direct(at_us)) => Some(at_us.saturating_sub(self.wall_now_us())),
            Some(dash::TimeSource::Fetch(url)) => {
                // A time is a few dozen bytes, and a player does not wait long for it:
                // a slow or bloated source leaves the agent's clock in charge, and its
                // steps (a lookup, a connection) do not name the session's timeout.
                let limits = Expectations {
                    max_bytes: self.bytes.saturating_add(MAX_TIME_BYTES),
                    ..expect.clone()
                };
                let stage = self.stage;
                let asked = self.wall_now_us();
                let read =
                    tokio::time::timeout(TIME_SOURCE_WAIT, self.get(&url, &limits, true)).await;
                self.stage = stage;
                match read {
                    Ok(Ok((_, body))) => {
                        let answered = self.wall_now_us();
                        dash::parse_time(&body)
                            .map(|at| at.saturating_sub(asked + (answered - asked) / 2))
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%url, error = %e.message, "the origin's clock cannot be read");
                        None
                    }
                    Err(_) => {
                        tracing::debug!(%url, "the origin's clock did not answer in time");
                        None
                    }
                }
            }
        };
        self.clock_offset_us = offset.unwrap_or(0);
    }

    /// GETs a live segment that should be published by now; a 404 is asked again
    /// (up to [`PUBLISH_RETRIES`] times, a quarter segment apart), as dash.js does: an
    /// origin whose clock runs a little behind the agent's publishes it a little later.
    async fn get_published(
        &mut self,
        url: &Url,
        expect: &Expectations,
        segment_us: u64,
    ) -> Result<(), MeasurementError> {
        let mut tries = 0;
        loop {
            match self.get(url, expect, false).await {
                Err(e)
                    if e.kind == ErrorKind::HttpStatus
                        && self.last.and_then(|f| f.status) == Some(404)
                        && tries < PUBLISH_RETRIES =>
                {
                    tries += 1;
                    let apart = (segment_us / 4).clamp(50_000, 2_000_000);
                    tokio::time::sleep(Duration::from_micros(apart)).await;
                }
                other => return other.map(|_| ()),
            }
        }
    }

    /// GETs `url` and the redirects it leads to; the final URL and, when `keep`, its
    /// body.
    async fn get(
        &mut self,
        url: &Url,
        expect: &Expectations,
        keep: bool,
    ) -> Result<(Url, Vec<u8>), MeasurementError> {
        self.get_range(url, expect, keep, None).await
    }

    /// [`Session::get`] of `range` of `url` when given (each hop asked for it): the
    /// answer must be that part, `206 Partial Content` with exactly its bytes; a
    /// server that sends the whole file instead (`200`, it does not serve ranges) fails
    /// the session before its body is read, as a player cannot play it either.
    async fn get_range(
        &mut self,
        url: &Url,
        expect: &Expectations,
        keep: bool,
        range: Option<ByteRange>,
    ) -> Result<(Url, Vec<u8>), MeasurementError> {
        let mut url = url.clone();
        let mut hops = 0;
        loop {
            let (response, first) = self.send(&url, range).await?;
            let status = response.status().as_u16();
            let location =
                if expect.max_redirects > 0 && matches!(status, 301 | 302 | 303 | 307 | 308) {
                    response
                        .headers()
                        .get(hyper::header::LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                } else {
                    None
                };
            let Some(location) = location else {
                self.last = Some(first);
                if let Some(e) = status_failure(status, expect) {
                    return Err(fail(e.kind, format!("{url}: {}", e.message)));
                }
                let Some(range) = range else {
                    let body = self.read(response, &url, expect, keep).await?;
                    return Ok((url, body));
                };
                if status != 206 {
                    return Err(fail(
                        ErrorKind::Http,
                        format!(
                            "{url} answered {status} to a request for its bytes {}-{}: the \
                             server does not serve byte ranges, which the playlist needs",
                            range.offset,
                            range.offset + range.length.max(1) - 1
                        ),
                    ));
                }
                let before = self.bytes;
                let body = self.read(response, &url, expect, keep).await?;
                let got = self.bytes - before;
                if got != range.length {
                    return Err(fail(
                        ErrorKind::Http,
                        format!(
                            "{url} sent {got} bytes for a range of {} from byte {}",
                            range.length, range.offset
                        ),
                    ));
                }
                return Ok((url, body));
            };
            // A redirect's body is part of its hop, as `measure` reads it.
            self.read(response, &url, expect, false).await?;
            let target = url.join(&location).map_err(|e| {
                fail(
                    ErrorKind::Http,
                    format!("{url} redirects to an invalid location {location:?}: {e}"),
                )
            })?;
            if hops >= expect.max_redirects {
                return Err(fail(
                    ErrorKind::TooManyRedirects,
                    format!(
                        "more than {} redirects (the last one to {target})",
                        expect.max_redirects
                    ),
                ));
            }
            hops += 1;
            url = target;
        }
    }

    /// Sends a GET of `url` on its origin's connection (resolved, guarded and opened
    /// on first use, reopened when the server closed it); the response head and the
    /// request's phases.
    async fn send(
        &mut self,
        url: &Url,
        range: Option<ByteRange>,
    ) -> Result<(Response<Incoming>, First), MeasurementError> {
        let Target { https, host, port } = Target::of(url)?;
        let mut dns_us = 0;
        let origin = match self
            .origins
            .entry(format!("{}://{host}:{port}", url.scheme()))
        {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                self.stage = Stage::Resolving;
                let resolving = Instant::now();
                let addrs = self.engine.resolve(&host, port).await?;
                dns_us = micros(resolving.elapsed());
                v.insert(Origin {
                    dialer: Dialer {
                        engine: self.engine.clone(),
                        https,
                        host,
                        addrs,
                        tasks: self.tasks.clone(),
                    },
                    conn: None,
                })
            }
        };
        let reusable = match origin.conn.as_mut() {
            Some(conn) => conn.ready().await,
            None => false,
        };
        let (mut conn, reused) = match origin.conn.take() {
            Some(conn) if reusable => (conn, true),
            _ => {
                self.stage = Stage::Connecting;
                (origin.dialer.open().await?, false)
            }
        };
        self.stage = Stage::Exchanging;
        let mut request = conn.request(url, Method::GET)?;
        if let Some(range) = range {
            let value = hyper::header::HeaderValue::from_str(&range.header())
                .map_err(|e| fail(ErrorKind::Http, format!("a byte range for {url}: {e}")))?;
            request.headers_mut().insert(hyper::header::RANGE, value);
        }
        let (response, ttfb_us) = conn.exchange(request).await?;
        let mut first = conn.first(Some(response.status().as_u16()), ttfb_us);
        if reused {
            // No handshake in this request.
            first.connect_us = 0;
            first.tls_us = 0;
        }
        origin.conn = Some(conn);
        self.first.get_or_insert((dns_us, first));
        Ok((response, first))
    }

    /// Reads a body to its end, counting its bytes against the session's `max_bytes`;
    /// the body when `keep`.
    async fn read(
        &mut self,
        response: Response<Incoming>,
        url: &Url,
        expect: &Expectations,
        keep: bool,
    ) -> Result<Vec<u8>, MeasurementError> {
        let mut kept = Vec::new();
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| fail(ErrorKind::Http, format!("the body of {url} broke off: {e}")))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            let now = Instant::now();
            if self.downloading && self.transfer_from.is_none() {
                self.transfer_from = Some(now);
            }
            self.last_byte = Some(now);
            self.bytes += data.len() as u64;
            if self.bytes > expect.max_bytes {
                return Err(fail(
                    ErrorKind::BodyTooLarge,
                    format!(
                        "the session's bodies exceed the limit of {} bytes (at {url})",
                        expect.max_bytes
                    ),
                ));
            }
            if keep {
                if kept.len() + data.len() > MAX_MANIFEST_BYTES {
                    return Err(invalid(format!(
                        "{url} is larger than a playlist or MPD can be ({} MiB at most)",
                        MAX_MANIFEST_BYTES >> 20
                    )));
                }
                kept.extend_from_slice(data);
            }
        }
        self.last_byte = Some(Instant::now());
        Ok(kept)
    }

    fn into_measurement(self, error: Option<MeasurementError>, ended: Instant) -> Measurement {
        let since_start = |at: Instant| micros(at.saturating_duration_since(self.start));
        let playback = match &self.player {
            None => Playback::default(),
            Some(player) if error.is_none() => player.ended(),
            Some(player) => player.cut(since_start(ended)),
        };
        let transfer = match (self.transfer_from, self.last_segment_byte) {
            (Some(from), Some(to)) => micros(to.saturating_duration_since(from)),
            _ => 0,
        };
        let (dns, first) = self.first.unzip();
        let ttfb = first.map_or(0, |f| f.ttfb_us);
        let end = match (&error, self.last_byte) {
            (None, Some(last)) => last,
            _ => ended,
        };
        let timings = Timings {
            dns: dns.unwrap_or(0),
            connect: first.map_or(0, |f| f.connect_us),
            tls: first.map_or(0, |f| f.tls_us),
            ttfb,
            transfer,
            // The first request's answer comes before the first segment's byte, so
            // the two never overlap; the total covers both all the same (the
            // controller refuses a ttfb or transfer longer than the total).
            total: since_start(end).max(ttfb + transfer),
        };
        let shown = self.media_playlist.or(self.last);
        Measurement {
            status: shown.and_then(|f| f.status),
            bytes: self.bytes,
            error,
            timings_us: timings,
            bytes_decoded: self.bytes,
            remote_addr: shown.map(|f| f.remote.ip().to_string()),
            ip_version: shown.map(|f| if f.remote.is_ipv4() { 4 } else { 6 }),
            http_version: shown.map(|f| f.http_version.to_owned()),
            video: Some(VideoSummary {
                playlist_url: self.playlist_url.unwrap_or_default(),
                bitrate_bps: self.bitrate_bps,
                segments: self.segments,
                played_ms: playback.played_us / 1_000,
                startup_us: playback.startup_us.unwrap_or(0),
                stalls: playback.stalls,
                stall_us: playback.stall_us,
            }),
            ..Measurement::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::tests::local_engine;
    use crate::measure::tests::site;
    use crate::measure::EngineConfig;
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::Request;
    use hyper_util::rt::TokioIo;
    use lastmile_testbed::link::{Link, LinkProfile};
    use lastmile_testbed::video::{
        self as stream, DASH_PATH, INIT_BYTES, LIVE_MASTER_PATH, MASTER_PATH, RENDITIONS, SEGMENTS,
    };
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::net::TcpListener;

    /// A second, µs.
    const S: u64 = 1_000_000;

    /// A player for `media_us` that was handed `arrivals` (µs, media µs) in order.
    fn player(media_us: u64, arrivals: &[(u64, u64)]) -> Player {
        let mut p = Player::new(media_us);
        for &(at, media) in arrivals {
            p.arrived(at, media);
        }
        p
    }

    /// One-second segments arriving at these times.
    fn seconds(times_us: &[u64]) -> Vec<(u64, u64)> {
        times_us.iter().map(|&at| (at, S)).collect()
    }

    #[test]
    fn on_a_fast_line_playback_starts_with_the_startup_buffer_and_never_stalls() {
        // Twelve one-second segments, one every 100 ms: 2.5 s of media is buffered at
        // the third, not before.
        let times: Vec<u64> = (1..=12).map(|k| k * S / 10).collect();
        let p = player(12 * S, &seconds(&times));
        assert_eq!(
            p.ended(),
            Playback {
                startup_us: Some(3 * S / 10),
                stalls: 0,
                stall_us: 0,
                played_us: 12 * S,
            }
        );
        // Two segments (2 s) are not enough to start.
        let p = player(12 * S, &seconds(&times[..2]));
        assert_eq!(p.cut(times[1]).startup_us, None);
    }

    #[test]
    fn a_line_slower_than_the_bitrate_stalls_until_the_rebuffer_is_in() {
        // A one-second segment every 2 s (the line carries half the bitrate). Starts at
        // 6 s with 3 s buffered; the 5 s buffered by 10 s run dry at 11 s, before the
        // sixth segment (12 s); playback resumes once 5 s more are in, with the tenth
        // (20 s): one stall of 9 s. The last two come before the buffer runs dry.
        let times: Vec<u64> = (1..=12).map(|k| 2 * k * S).collect();
        let p = player(12 * S, &seconds(&times));
        assert_eq!(
            p.ended(),
            Playback {
                startup_us: Some(6 * S),
                stalls: 1,
                stall_us: 9 * S,
                played_us: 12 * S,
            }
        );
        // Cut in the middle of that stall (at 15 s), 4 s of it counted.
        let p = player(12 * S, &seconds(&times[..7]));
        assert_eq!(
            p.cut(15 * S),
            Playback {
                startup_us: Some(6 * S),
                stalls: 1,
                stall_us: 4 * S,
                played_us: 5 * S,
            }
        );
        // Cut while playing, after the buffer ran dry but before the next arrival: the
        // stall in progress counts to the cut.
        let p = player(12 * S, &seconds(&times[..5]));
        assert_eq!(
            p.cut(11 * S + S / 2),
            Playback {
                startup_us: Some(6 * S),
                stalls: 1,
                stall_us: S / 2,
                played_us: 5 * S,
            }
        );
    }

    #[test]
    fn a_session_shorter_than_the_startup_buffer_starts_once_all_its_media_is_in() {
        // Two seconds of media, the second segment in at 1.2 s: playback starts then.
        let p = player(2 * S, &seconds(&[S / 2, 6 * S / 5]));
        assert_eq!(
            p.ended(),
            Playback {
                startup_us: Some(6 * S / 5),
                stalls: 0,
                stall_us: 0,
                played_us: 2 * S,
            }
        );
        // A session of 1.5 s whose one-second segments overshoot it plays 1.5 s.
        let p = player(3 * S / 2, &seconds(&[S / 10, S / 5]));
        assert_eq!(p.ended().played_us, 3 * S / 2);
        assert_eq!(p.ended().startup_us, Some(S / 5));
    }

    #[test]
    fn playback_after_the_last_download_adds_no_stall() {
        // Four seconds of media: three segments in by 0.3 s (start, 3 s buffered, dry at
        // 3.3 s), the fourth at 3.2 s. Nothing is left to download, so the rest plays
        // out, computed: no stall, all four seconds played.
        let p = player(4 * S, &seconds(&[S / 10, S / 5, 3 * S / 10, 16 * S / 5]));
        assert_eq!(
            p.ended(),
            Playback {
                startup_us: Some(3 * S / 10),
                stalls: 0,
                stall_us: 0,
                played_us: 4 * S,
            }
        );
        // The same fourth segment at 3.4 s comes 0.1 s after the buffer ran dry; the
        // rest is less than the rebuffer and all of it is in: 0.1 s stalled.
        let p = player(4 * S, &seconds(&[S / 10, S / 5, 3 * S / 10, 17 * S / 5]));
        assert_eq!((p.ended().stalls, p.ended().stall_us), (1, S / 10));
    }

    fn variant(bandwidth: u64, uri: &str) -> VariantStream {
        VariantStream {
            bandwidth,
            uri: uri.to_owned(),
            ..VariantStream::default()
        }
    }

    #[test]
    fn the_variant_is_the_highest_at_or_under_the_limit_else_the_lowest() {
        let mut trick = variant(100, "iframes.m3u8");
        trick.is_i_frame = true;
        let variants = [
            variant(2_000_000, "low.m3u8"),
            variant(30_000_000, "high.m3u8"),
            variant(6_000_000, "mid.m3u8"),
            trick,
        ];
        let chosen = |kbps| choose_variant(&variants, kbps).map(|v| v.uri.as_str());
        assert_eq!(chosen(None), Some("high.m3u8"));
        assert_eq!(chosen(Some(30_000)), Some("high.m3u8"));
        assert_eq!(chosen(Some(29_999)), Some("mid.m3u8"));
        assert_eq!(chosen(Some(2_000)), Some("low.m3u8"));
        // None at or under it: the lowest playable one (never the I-frame variant).
        assert_eq!(chosen(Some(1)), Some("low.m3u8"));
        assert_eq!(choose_variant(&variants[3..], None), None);
    }

    fn media(text: &str) -> MediaPlaylist {
        match m3u8_rs::parse_playlist_res(text.as_bytes()) {
            Ok(Playlist::MediaPlaylist(m)) => m,
            other => panic!("not a media playlist: {other:?}"),
        }
    }

    #[test]
    fn a_plan_covers_play_ms_and_fetches_each_initialisation_section_once() {
        let base = Url::parse("http://cdn.test/v/index.m3u8").unwrap();
        let text = "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-PLAYLIST-TYPE:EVENT\n\
                    #EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:4.0,\na.m4s\n#EXTINF:4.0,\nb.m4s\n\
                    #EXTINF:4.0,\nhttp://other.test/c.m4s\n#EXTINF:4.0,\nd.m4s\n#EXT-X-ENDLIST\n";
        let p = plan(&media(text), &base, 9_000).unwrap();
        let urls: Vec<(&str, Option<u64>)> = p
            .pieces
            .iter()
            .map(|piece| (piece.url.as_str(), piece.media_us))
            .collect();
        assert_eq!(
            urls,
            [
                ("http://cdn.test/v/init.mp4", None),
                ("http://cdn.test/v/a.m4s", Some(4 * S)),
                ("http://cdn.test/v/b.m4s", Some(4 * S)),
                ("http://other.test/c.m4s", Some(4 * S)),
            ],
            "9 s of media need three 4 s segments"
        );
        assert_eq!(p.media_us, 9 * S);
        // Longer than the playlist: all of it.
        assert_eq!(plan(&media(text), &base, 60_000).unwrap().media_us, 16 * S);
    }

    #[test]
    fn playlists_a_player_cannot_play_are_playlist_invalid() {
        let base = Url::parse("http://cdn.test/live.m3u8").unwrap();
        let refused = |text: &str| {
            let e = plan(&media(text), &base, 10_000).unwrap_err();
            assert_eq!(e.kind, ErrorKind::PlaylistInvalid, "{e:?}");
            e.message
        };
        let empty = refused("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-ENDLIST\n");
        assert!(empty.contains("no segments"), "{empty}");
        let adrift = refused(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n#EXT-X-BYTERANGE:1000\nall.ts\n#EXT-X-ENDLIST\n",
        );
        assert!(adrift.contains("has no offset"), "{adrift}");
        let silent =
            refused("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:0,\na.ts\n#EXT-X-ENDLIST\n");
        assert!(silent.contains("no media"), "{silent}");
        let e = parse_playlist(b"<!doctype html><p>hello", &base).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PlaylistInvalid);

        // Live: a playlist without a target duration cannot be reloaded; I-frame
        // ones and ranges that cannot be placed are refused as for VOD; an empty one
        // is fine (the next reload may list segments).
        let live_refused = |text: &str| {
            let e = check_live(&media(text), &base).unwrap_err();
            assert_eq!(e.kind, ErrorKind::PlaylistInvalid, "{e:?}");
            e.message
        };
        let untimed = live_refused("#EXTM3U\n#EXTINF:2.0,\na.ts\n");
        assert!(untimed.contains("TARGETDURATION"), "{untimed}");
        let adrift = live_refused(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n#EXT-X-BYTERANGE:1000\nall.ts\n",
        );
        assert!(adrift.contains("has no offset"), "{adrift}");
        let trick = live_refused(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-I-FRAMES-ONLY\n#EXTINF:2.0,\na.ts\n",
        );
        assert!(trick.contains("I-frame"), "{trick}");
        assert!(check_live(&media("#EXTM3U\n#EXT-X-TARGETDURATION:2\n"), &base).is_ok());
    }

    #[test]
    fn byte_ranges_follow_each_other_within_one_resource() {
        let base = Url::parse("http://cdn.test/vod/index.m3u8").unwrap();
        let text = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PLAYLIST-TYPE:VOD\n\
                    #EXT-X-MAP:URI=\"main.mp4\",BYTERANGE=\"720@0\"\n\
                    #EXTINF:2.0,\n#EXT-X-BYTERANGE:1000@720\nmain.mp4\n\
                    #EXTINF:2.0,\n#EXT-X-BYTERANGE:1500\nmain.mp4\n\
                    #EXTINF:2.0,\n#EXT-X-BYTERANGE:500@0\nother.mp4\n\
                    #EXTINF:2.0,\nwhole.ts\n#EXT-X-ENDLIST\n";
        let plan = plan(&media(text), &base, 60_000).unwrap();
        let got: Vec<(&str, Option<(u64, u64)>)> = plan
            .pieces
            .iter()
            .map(|p| (p.url.path(), p.range.map(|r| (r.offset, r.length))))
            .collect();
        assert_eq!(
            got,
            [
                ("/vod/main.mp4", Some((0, 720))),
                ("/vod/main.mp4", Some((720, 1_000))),
                ("/vod/main.mp4", Some((1_720, 1_500))),
                ("/vod/other.mp4", Some((0, 500))),
                ("/vod/whole.ts", None),
            ]
        );
        assert_eq!(
            ByteRange {
                offset: 720,
                length: 1_000
            }
            .header(),
            "bytes=720-1719"
        );
    }

    #[test]
    fn live_playback_starts_three_target_durations_from_the_end() {
        // Six 1 s segments, target 1 s: the fourth starts 3 s from the end.
        assert_eq!(live_start(&[S; 6], S), 3);
        // 4 s segments under a target of 4: the third from the end starts 12 s from it.
        assert_eq!(live_start(&[4 * S; 10], 4 * S), 7);
        // Segments shorter than the target: as many as make three target durations.
        assert_eq!(live_start(&[S / 2; 10], S), 4);
        // A segment that starts a little less than 3 target durations from the end
        // is too close: the one before it.
        assert_eq!(live_start(&[S, S, S, S, S - 1, S], S), 2);
        // Shorter than three target durations in all: from the first; none: 0.
        assert_eq!(live_start(&[S, S], S), 0);
        assert_eq!(live_start(&[], S), 0);
    }

    #[test]
    fn a_reload_waits_a_target_duration_after_a_change_and_half_of_one_after_none() {
        let target = Duration::from_secs(6);
        assert_eq!(reload_after(target, true), Duration::from_secs(6));
        assert_eq!(reload_after(target, false), Duration::from_secs(3));
        assert_eq!(
            reload_after(Duration::from_secs(1), false),
            Duration::from_millis(500)
        );
        // One every half target duration over the media, and a few more.
        assert_eq!(max_reloads(20_000, Duration::from_secs(1)), 44);
        assert_eq!(max_reloads(20_000, Duration::from_secs(6)), 10);
        assert_eq!(max_reloads(1_000, Duration::from_secs(10)), 4);
    }

    #[test]
    fn a_live_session_follows_the_media_sequence_from_its_start() {
        let live = |sequence: u64, count: u64, end: bool| {
            let mut text = format!(
                "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:{sequence}\n\
                 #EXT-X-PLAYLIST-TYPE:EVENT\n"
            );
            for n in sequence..sequence + count {
                text.push_str(&format!("#EXTINF:1.0,\ns{n}.ts\n"));
            }
            if end {
                text.push_str("#EXT-X-ENDLIST\n");
            }
            media(&text)
        };
        // An EVENT without #EXT-X-ENDLIST is live.
        assert!(!live(10, 6, false).end_list);
        // The start: three segments from the end of the first playlist with any.
        assert_eq!(live_step(&live(10, 6, false), None, S), LiveStep::Fetch(3));
        assert_eq!(live_step(&live(0, 0, false), None, S), LiveStep::Reload);
        // Then by number: 15 is the last listed, 16 not yet.
        assert_eq!(
            live_step(&live(10, 6, false), Some(15), S),
            LiveStep::Fetch(5)
        );
        assert_eq!(
            live_step(&live(10, 6, false), Some(16), S),
            LiveStep::Reload
        );
        // The window moved on: 16 is now the first listed, 12 is gone.
        assert_eq!(
            live_step(&live(16, 6, false), Some(16), S),
            LiveStep::Fetch(0)
        );
        assert_eq!(
            live_step(&live(16, 6, false), Some(12), S),
            LiveStep::ScrolledOff(16)
        );
        // The stream ended after the last listed one.
        assert_eq!(live_step(&live(10, 6, true), Some(16), S), LiveStep::Ended);
        assert_eq!(
            live_step(&live(10, 6, true), Some(14), S),
            LiveStep::Fetch(4)
        );
    }

    #[test]
    fn a_live_dash_session_starts_behind_the_edge_and_follows_segment_start_times() {
        // Six one-second segments starting at 10..15 s, the last published at 16 s.
        let view = |dynamic: bool, first: u64| dash::LiveView {
            segments: (first..16)
                .map(|n| dash::LiveSegment {
                    start_us: n * S,
                    media_us: S,
                    url: Url::parse(&format!("http://x/{n}.m4s")).unwrap(),
                    available_at_us: ((n + 1) * S) as i64,
                })
                .collect(),
            init: None,
            bitrate_bps: None,
            reload_after: Duration::from_secs(1),
            delay_us: 3 * S,
            segment_us: S,
            dynamic,
        };
        let live = view(true, 10);
        // At 14.5 s four are published (10..13): start three seconds before the end
        // of the last, at segment 11 (index 1).
        assert_eq!(
            dash_step(&live, None, (14 * S + S / 2) as i64),
            LiveStep::Fetch(1)
        );
        // The next one by start time, even one not published yet (it is waited for),
        // within rounding of the last one's end.
        let after = |start_us: u64, end_us: u64| Some(Played { start_us, end_us });
        assert_eq!(
            dash_step(&live, after(11 * S, 12 * S), 0),
            LiveStep::Fetch(2)
        );
        assert_eq!(
            dash_step(&live, after(14 * S, 15 * S - 3), 0),
            LiveStep::Fetch(5)
        );
        // Past the listed ones: reload; once the presentation ended: the end.
        assert_eq!(dash_step(&live, after(15 * S, 16 * S), 0), LiveStep::Reload);
        assert_eq!(
            dash_step(&view(false, 10), after(15 * S, 16 * S), 0),
            LiveStep::Ended
        );
        // Nothing published yet: reload (a static one has nothing to play).
        assert_eq!(dash_step(&live, None, 5 * S as i64), LiveStep::Reload);
        assert_eq!(
            dash_step(&view(false, 10), None, 5 * S as i64),
            LiveStep::Ended
        );
        // The window moved past the next segment.
        assert_eq!(
            dash_step(&view(true, 13), after(10 * S, 11 * S), 0),
            LiveStep::ScrolledOff(13 * S)
        );
    }

    #[test]
    fn a_live_dash_session_never_steps_back_to_a_segment_it_played() {
        // A 20 s segment, then 1 s ones: the slack (a quarter of the longest, 5 s)
        // reaches back past the last start, which the next segment must follow.
        let mut segments = vec![(0, 20 * S)];
        segments.extend((20..60).map(|n| (n * S, S)));
        let live = dash::LiveView {
            segments: segments
                .iter()
                .map(|&(start_us, media_us)| dash::LiveSegment {
                    start_us,
                    media_us,
                    url: Url::parse(&format!("http://x/{start_us}.m4s")).unwrap(),
                    available_at_us: (start_us + media_us) as i64,
                })
                .collect(),
            init: None,
            bitrate_bps: None,
            reload_after: Duration::from_secs(1),
            delay_us: 3 * S,
            segment_us: 20 * S,
            dynamic: true,
        };
        let mut played = Played {
            start_us: 40 * S,
            end_us: 41 * S,
        };
        for _ in 0..10 {
            let LiveStep::Fetch(index) = dash_step(&live, Some(played), 0) else {
                panic!("a next segment is listed");
            };
            let next = &live.segments[index];
            assert_eq!(next.start_us, played.end_us, "the one after {played:?}");
            played = Played {
                start_us: next.start_us,
                end_us: next.start_us + next.media_us,
            };
        }
    }

    #[test]
    fn a_stream_that_ends_before_play_ms_plays_what_came() {
        // Made for 12 s; two one-second segments by 0.2 s, then the stream ended:
        // 2 s is all the media, so playback starts with the second and plays both.
        let mut p = player(12 * S, &seconds(&[S / 10, S / 5]));
        assert_eq!(p.cut(S / 5).startup_us, None, "2 s are not enough to start");
        p.shorten(2 * S);
        assert_eq!(
            p.ended(),
            Playback {
                startup_us: Some(S / 5),
                stalls: 0,
                stall_us: 0,
                played_us: 2 * S,
            }
        );
        // Ended in a stall: it ends at the last arrival, with all the media played.
        let times: Vec<u64> = (1..=7).map(|k| 2 * k * S).collect();
        let mut p = player(12 * S, &seconds(&times));
        p.shorten(7 * S);
        assert_eq!(
            p.ended(),
            Playback {
                startup_us: Some(6 * S),
                stalls: 1,
                stall_us: 3 * S,
                played_us: 7 * S,
            }
        );
    }

    // Real sessions, over sockets on 127.0.0.1.

    fn within(ms: u64) -> Expectations {
        Expectations {
            timeout: Duration::from_millis(ms),
            max_bytes: 1024 * 1024 * 1024,
            ..Expectations::default()
        }
    }

    fn session(play_ms: u64, max_bitrate_kbps: Option<u64>) -> VideoTask {
        VideoTask {
            play_ms,
            max_bitrate_kbps,
        }
    }

    fn summary(m: &Measurement) -> &VideoSummary {
        m.video
            .as_ref()
            .unwrap_or_else(|| panic!("no video summary: {m:?}"))
    }

    fn kind(m: &Measurement) -> Option<ErrorKind> {
        m.error.as_ref().map(|e| e.kind)
    }

    /// Asserts that the session failed as `expected`, its message saying each of `says`.
    fn failed_with(m: &Measurement, expected: ErrorKind, says: &[&str]) {
        assert_eq!(kind(m), Some(expected), "{m:?}");
        let message = &m.error.as_ref().unwrap().message;
        for said in says {
            assert!(message.contains(said), "{said:?} in {message}");
        }
    }

    /// The phases the controller accepts: none longer than the total, ttfb and
    /// transfer within it together.
    fn assert_consistent(t: Timings) {
        assert!(t.total >= t.ttfb + t.transfer, "{t:?}");
        for phase in [t.dns, t.connect, t.tls, t.ttfb, t.transfer] {
            assert!(phase <= t.total, "{t:?}");
        }
    }

    /// An emulated DSL line (16 Mbit/s down, 1 up, 40 ms) in front of `site`.
    async fn dsl_line_to(site: &lastmile_testbed::site::TargetSite) -> Link {
        let profile = LinkProfile {
            down_bps: 16_000_000,
            up_bps: 1_000_000,
            rtt: Duration::from_millis(40),
        };
        Link::start("127.0.0.1:0".parse().unwrap(), site.addr(), profile)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_low_rendition_plays_on_loopback_without_a_stall_over_one_connection() {
        let site = site(5).await;
        let url = format!("{}{MASTER_PATH}", site.origin());
        let m = local_engine()
            .measure_video(&url, &within(20_000), session(12_000, Some(2_000)))
            .await;
        assert_eq!(m.error, None, "{m:?}");
        assert_eq!(m.status, Some(200));
        assert_eq!(m.http_version.as_deref(), Some("1.1"));
        assert_eq!(
            (m.remote_addr.as_deref(), m.ip_version),
            (Some("127.0.0.1"), Some(4))
        );
        let s = summary(&m);
        assert_eq!(
            s.playlist_url,
            format!("{}/video/low/index.m3u8", site.origin())
        );
        assert_eq!(s.bitrate_bps, Some(RENDITIONS[0].bitrate_bps));
        assert_eq!(s.segments, SEGMENTS as u32);
        assert_eq!(s.played_ms, 12_000);
        assert_eq!((s.stalls, s.stall_us), (0, 0), "{s:?}");
        assert!(
            s.startup_us > 0 && s.startup_us < 1_000_000,
            "startup below a second on loopback: {s:?}"
        );
        let bytes = (stream::master().len()
            + stream::media().len()
            + SEGMENTS * stream::segment_bytes(RENDITIONS[0])) as u64;
        assert_eq!((m.bytes, m.bytes_decoded), (bytes, bytes));
        let t = m.timings_us;
        assert_consistent(t);
        assert!(t.connect > 0 && t.ttfb > 0 && t.transfer > 0, "{t:?}");
        assert!(
            t.total < 12_000_000,
            "as long as the downloads, not the media"
        );
        assert!(s.startup_us <= t.total, "{s:?} {t:?}");
        assert_eq!(
            site.connections().accepted,
            1,
            "every request on one kept-alive connection"
        );
    }

    #[tokio::test]
    async fn max_bitrate_kbps_picks_the_variant() {
        let site = site(0).await;
        let url = format!("{}{MASTER_PATH}", site.origin());
        let [low, high] = RENDITIONS;
        for (max, rendition) in [
            (None, high),
            (Some(30_000), high),
            (Some(29_999), low),
            (Some(2_000), low),
            (Some(1), low),
        ] {
            let m = local_engine()
                .measure_video(&url, &within(20_000), session(1_000, max))
                .await;
            assert_eq!(m.error, None, "{max:?}: {m:?}");
            let s = summary(&m);
            assert_eq!(s.bitrate_bps, Some(rendition.bitrate_bps), "{max:?}");
            assert!(
                s.playlist_url
                    .ends_with(&format!("/{}/index.m3u8", rendition.name)),
                "{max:?}: {s:?}"
            );
            assert_eq!((s.segments, s.played_ms), (1, 1_000), "{s:?}");
            assert!(m.bytes > stream::segment_bytes(rendition) as u64);
        }
    }

    #[tokio::test]
    async fn behind_a_dsl_line_the_high_rendition_stalls_and_the_low_one_does_not() {
        let site = site(5).await;
        let link = dsl_line_to(&site).await;
        let url = format!("http://{}{MASTER_PATH}", link.addr());
        // Six seconds of media: at 30 Mbit/s a segment takes at least 1.9 s over 16,
        // so the buffer runs dry before the sixth arrives.
        let mut seen = Vec::new();
        for max in [Some(2_000), None] {
            let m = local_engine()
                .measure_video(&url, &within(60_000), session(6_000, max))
                .await;
            assert_eq!(m.error, None, "{m:?}");
            assert_consistent(m.timings_us);
            let s = summary(&m).clone();
            eprintln!(
                "{} kbit/s over 16 Mbit/s, 40 ms: startup {:.1} ms, {} stall(s), {:.1} ms \
                 stalled, {} segments in {:.1} ms\n{}",
                s.bitrate_bps.unwrap_or(0) / 1000,
                s.startup_us as f64 / 1000.0,
                s.stalls,
                s.stall_us as f64 / 1000.0,
                s.segments,
                m.timings_us.total as f64 / 1000.0,
                crate::cli::video_table(&m, &s)
            );
            assert_eq!((s.segments, s.played_ms), (6, 6_000), "{s:?}");
            seen.push(s);
        }
        let (low, high) = (&seen[0], &seen[1]);
        assert_eq!(low.bitrate_bps, Some(2_000_000));
        assert_eq!((low.stalls, low.stall_us), (0, 0), "{low:?}");
        assert!(low.startup_us < 2_000_000, "{low:?}");
        assert_eq!(high.bitrate_bps, Some(30_000_000));
        assert!(high.stalls >= 1 && high.stall_us > 0, "{high:?}");
        assert!(high.startup_us > low.startup_us, "{high:?}");
    }

    #[tokio::test]
    async fn a_dash_presentation_plays_its_capped_representation_from_its_initialisation() {
        let site = site(5).await;
        let url = format!("{}{DASH_PATH}", site.origin());
        let m = local_engine()
            .measure_video(&url, &within(20_000), session(12_000, Some(2_000)))
            .await;
        assert_eq!(m.error, None, "{m:?}");
        assert_eq!(m.status, Some(200), "the MPD's");
        let s = summary(&m);
        assert_eq!(s.playlist_url, url, "the MPD is the playlist");
        assert_eq!(s.bitrate_bps, Some(RENDITIONS[0].bitrate_bps));
        assert_eq!((s.segments, s.played_ms), (SEGMENTS as u32, 12_000));
        assert_eq!((s.stalls, s.stall_us), (0, 0), "{s:?}");
        assert!(s.startup_us > 0 && s.startup_us < 1_000_000, "{s:?}");
        // The MPD, the low representation's initialisation and its twelve segments;
        // nothing of the audio set (which the site does not serve: a fetch would fail).
        let bytes = (stream::mpd().len()
            + INIT_BYTES
            + SEGMENTS * stream::segment_bytes(RENDITIONS[0])) as u64;
        assert_eq!((m.bytes, m.bytes_decoded), (bytes, bytes));
        assert_consistent(m.timings_us);
        assert_eq!(site.connections().accepted, 1, "one kept-alive connection");

        // No cap: the high representation.
        let m = local_engine()
            .measure_video(&url, &within(20_000), session(2_000, None))
            .await;
        assert_eq!(m.error, None, "{m:?}");
        assert_eq!(summary(&m).bitrate_bps, Some(RENDITIONS[1].bitrate_bps));
        assert_eq!(summary(&m).segments, 2);
    }

    #[tokio::test]
    async fn behind_a_dsl_line_the_high_dash_representation_stalls() {
        let site = site(5).await;
        let link = dsl_line_to(&site).await;
        let url = format!("http://{}{DASH_PATH}", link.addr());
        let m = local_engine()
            .measure_video(&url, &within(60_000), session(6_000, None))
            .await;
        assert_eq!(m.error, None, "{m:?}");
        let s = summary(&m);
        eprintln!("DASH 30 Mbit/s over 16 Mbit/s, 40 ms: {s:?}");
        assert_eq!(s.bitrate_bps, Some(30_000_000));
        assert_eq!((s.segments, s.played_ms), (6, 6_000), "{s:?}");
        assert!(s.stalls >= 1 && s.stall_us > 0, "{s:?}");
    }

    #[tokio::test]
    async fn a_dash_presentation_without_a_clock_or_segments_is_playlist_invalid_before_any_segment(
    ) {
        // A live presentation without the moment its segments are timed from.
        let live = r#"<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic">
            <Period><AdaptationSet contentType="video">
            <SegmentTemplate media="$Number$.m4s" duration="1"/><Representation id="v" bandwidth="1"/>
            </AdaptationSet></Period></MPD>"#;
        let ranged = r#"<MPD><Period duration="PT10S"><AdaptationSet mimeType="video/mp4">
            <Representation id="v" bandwidth="1"><BaseURL>v.mp4</BaseURL>
            </Representation></AdaptationSet></Period></MPD>"#;
        let files = Files::start(vec![
            ("/live.mpd", Route::Body(live.as_bytes().to_vec())),
            ("/ranged.mpd", Route::Body(ranged.as_bytes().to_vec())),
        ])
        .await;
        for (path, says) in [
            ("/live.mpd", "availabilityStartTime"),
            ("/ranged.mpd", "nor an index"),
        ] {
            let m = local_engine()
                .measure_video(&files.url(path), &within(10_000), session(5_000, None))
                .await;
            assert_eq!(kind(&m), Some(ErrorKind::PlaylistInvalid), "{m:?}");
            assert!(m.error.as_ref().unwrap().message.contains(says), "{m:?}");
            assert_eq!(m.status, Some(200));
            assert_eq!(summary(&m).segments, 0);
        }
    }

    /// What [`Files`] answers for a path.
    #[derive(Clone)]
    enum Route {
        /// A file; a `Range: bytes=a-b` request gets those bytes (206).
        Body(Vec<u8>),
        /// A file served whole whatever the request asks (no range support).
        Whole(Vec<u8>),
        Redirect(String),
        /// A body made anew for each request.
        Dynamic(Arc<dyn Fn() -> Vec<u8> + Send + Sync>),
    }

    /// A keep-alive HTTP/1.1 server (hyper's) answering GETs from its routes, 404
    /// otherwise; it counts the connections it accepted.
    struct Files {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
    }

    impl Files {
        async fn start(routes: Vec<(&str, Route)>) -> Files {
            let routes: Arc<HashMap<String, Route>> = Arc::new(
                routes
                    .into_iter()
                    .map(|(path, route)| (path.to_owned(), route))
                    .collect(),
            );
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accepted = Arc::new(AtomicUsize::new(0));
            let counted = accepted.clone();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let routes = routes.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let routes = routes.clone();
                            async move {
                                let answer = hyper::Response::builder();
                                let range = req
                                    .headers()
                                    .get(hyper::header::RANGE)
                                    .and_then(|v| v.to_str().ok())
                                    .and_then(|v| v.strip_prefix("bytes="))
                                    .and_then(|v| v.split_once('-'))
                                    .and_then(|(a, b)| {
                                        Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?))
                                    });
                                let (answer, body) = match routes.get(req.uri().path()) {
                                    Some(Route::Body(body)) => match range {
                                        Some((first, last))
                                            if first <= last && first < body.len() =>
                                        {
                                            let last = last.min(body.len() - 1);
                                            (
                                                answer.status(206).header(
                                                    "content-range",
                                                    format!("bytes {first}-{last}/{}", body.len()),
                                                ),
                                                body[first..=last].to_vec(),
                                            )
                                        }
                                        _ => (answer, body.clone()),
                                    },
                                    Some(Route::Whole(body)) => (answer, body.clone()),
                                    Some(Route::Dynamic(make)) => (answer, make()),
                                    Some(Route::Redirect(to)) => {
                                        (answer.status(302).header("location", to), Vec::new())
                                    }
                                    None => (answer.status(404), b"not found".to_vec()),
                                };
                                answer.body(Full::new(Bytes::from(body)))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                    });
                }
            });
            Files { addr, accepted }
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn a_media_playlist_plays_as_it_is_with_another_origins_segments_on_their_own_connection()
    {
        // The segments and their initialisation section are on a second origin; one
        // segment, relative, is on the playlist's own (after a redirect).
        let cdn = Files::start(vec![
            ("/init.mp4", Route::Body(vec![1; 100])),
            ("/a.m4s", Route::Body(vec![2; 1_000])),
            ("/b.m4s", Route::Body(vec![3; 2_000])),
        ])
        .await;
        let playlist = format!(
            "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-PLAYLIST-TYPE:VOD\n\
             #EXT-X-MAP:URI=\"{}\"\n#EXTINF:1.0,\n{}\n#EXTINF:1.0,\n{}\n#EXTINF:1.0,\nc.m4s\n\
             #EXTINF:1.0,\nd.m4s\n#EXT-X-ENDLIST\n",
            cdn.url("/init.mp4"),
            cdn.url("/a.m4s"),
            cdn.url("/b.m4s")
        );
        let origin = Files::start(vec![
            ("/moved.m3u8", Route::Redirect("/v/index.m3u8".into())),
            ("/v/index.m3u8", Route::Body(playlist.clone().into_bytes())),
            ("/v/c.m4s", Route::Body(vec![4; 3_000])),
        ])
        .await;
        let url = origin.url("/moved.m3u8");
        let m = local_engine()
            .measure_video(&url, &within(10_000), session(2_500, Some(5_000)))
            .await;
        assert_eq!(m.error, None, "{m:?}");
        let s = summary(&m);
        assert_eq!(s.playlist_url, url);
        assert_eq!(s.bitrate_bps, None, "no master playlist, no bitrate");
        assert_eq!(
            (s.segments, s.played_ms),
            (3, 2_500),
            "2.5 s take three segments"
        );
        assert_eq!(s.stalls, 0);
        assert_eq!(m.bytes, playlist.len() as u64 + 100 + 1_000 + 2_000 + 3_000);
        assert_eq!(m.status, Some(200), "the media playlist's");
        assert_consistent(m.timings_us);
        assert_eq!(
            (origin.accepted(), cdn.accepted()),
            (1, 1),
            "one kept-alive connection per origin"
        );

        // The same playlist refused when its segment is missing: the error names it.
        let broken = Files::start(vec![(
            "/index.m3u8",
            Route::Body(playlist.replace("c.m4s", "gone.m4s").into_bytes()),
        )])
        .await;
        let m = local_engine()
            .measure_video(
                &broken.url("/index.m3u8"),
                &within(10_000),
                session(10_000, None),
            )
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::HttpStatus), "{m:?}");
        assert!(m.error.as_ref().unwrap().message.contains("gone.m4s"));
        assert_eq!(summary(&m).segments, 2, "the two before it arrived");
        assert_eq!(m.status, Some(200), "the media playlist's");
    }

    #[tokio::test]
    async fn a_single_file_rendition_is_played_by_byte_ranges_and_refused_by_a_server_without_them()
    {
        // One file: a 100-byte initialisation section, then three segments, the later
        // ones without an offset (each after the last); HLS and the same as DASH.
        let file: Vec<u8> = (0..6_100u32).map(|i| (i % 251) as u8).collect();
        let hls = "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-PLAYLIST-TYPE:VOD\n\
                   #EXT-X-MAP:URI=\"v.mp4\",BYTERANGE=\"100@0\"\n\
                   #EXTINF:1.0,\n#EXT-X-BYTERANGE:1000@100\nv.mp4\n\
                   #EXTINF:1.0,\n#EXT-X-BYTERANGE:2000\nv.mp4\n\
                   #EXTINF:1.0,\n#EXT-X-BYTERANGE:3000\nv.mp4\n#EXT-X-ENDLIST\n";
        let mpd = r#"<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" mediaPresentationDuration="PT3S">
            <Period><AdaptationSet contentType="video"><Representation id="v" bandwidth="1000">
            <BaseURL>v.mp4</BaseURL><SegmentList timescale="1" duration="1"><Initialization range="0-99"/>
            <SegmentURL mediaRange="100-1099"/><SegmentURL mediaRange="1100-3099"/><SegmentURL mediaRange="3100-6099"/>
            </SegmentList></Representation></AdaptationSet></Period></MPD>"#;
        let files = Files::start(vec![
            ("/index.m3u8", Route::Body(hls.as_bytes().to_vec())),
            ("/manifest.mpd", Route::Body(mpd.as_bytes().to_vec())),
            ("/v.mp4", Route::Body(file.clone())),
        ])
        .await;
        for (path, manifest) in [("/index.m3u8", hls.len()), ("/manifest.mpd", mpd.len())] {
            let m = local_engine()
                .measure_video(&files.url(path), &within(10_000), session(3_000, None))
                .await;
            assert_eq!(m.error, None, "{path}: {m:?}");
            assert_eq!(
                (summary(&m).segments, summary(&m).played_ms),
                (3, 3_000),
                "{path}"
            );
            assert_eq!(
                m.bytes as usize,
                manifest + file.len(),
                "{path}: the manifest and each byte of the file once"
            );
        }

        // The same file indexed by a sidx box (DASH's on-demand profile): the MPD names
        // only the initialisation's and the index's ranges.
        let sidx = dash::sidx_box(
            0,
            1,
            0,
            &[(false, 1_000, 1), (false, 2_000, 1), (false, 3_000, 1)],
        );
        let mut indexed = file[..100].to_vec();
        indexed.extend(&sidx);
        indexed.extend(&file[100..]);
        let on_demand = format!(
            r#"<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" mediaPresentationDuration="PT3S">
            <Period><AdaptationSet contentType="video"><Representation id="v" bandwidth="1000">
            <BaseURL>v.mp4</BaseURL><SegmentBase indexRange="100-{}"><Initialization range="0-99"/></SegmentBase>
            </Representation></AdaptationSet></Period></MPD>"#,
            100 + sidx.len() - 1
        );
        let files = Files::start(vec![
            (
                "/on-demand.mpd",
                Route::Body(on_demand.clone().into_bytes()),
            ),
            ("/v.mp4", Route::Body(indexed.clone())),
        ])
        .await;
        let m = local_engine()
            .measure_video(
                &files.url("/on-demand.mpd"),
                &within(10_000),
                session(3_000, None),
            )
            .await;
        assert_eq!(m.error, None, "{m:?}");
        assert_eq!((summary(&m).segments, summary(&m).played_ms), (3, 3_000));
        assert_eq!(
            m.bytes as usize,
            on_demand.len() + indexed.len(),
            "the MPD, the index and every other byte of the file once"
        );

        // A server that answers a range with the whole file (200) cannot serve this
        // playlist: the session fails at its first range, before reading that body.
        let whole = Files::start(vec![
            ("/index.m3u8", Route::Body(hls.as_bytes().to_vec())),
            ("/v.mp4", Route::Whole(file.clone())),
        ])
        .await;
        let m = local_engine()
            .measure_video(
                &whole.url("/index.m3u8"),
                &within(10_000),
                session(3_000, None),
            )
            .await;
        failed_with(&m, ErrorKind::Http, &["does not serve byte ranges"]);
        assert_eq!(summary(&m).segments, 0);
        assert_eq!(m.bytes as usize, hls.len(), "the whole file was not read");
    }

    #[tokio::test]
    async fn a_body_that_is_not_a_playlist_is_playlist_invalid() {
        let site = site(0).await;
        let m = local_engine()
            .measure_video(
                &format!("{}/", site.origin()),
                &within(10_000),
                session(5_000, None),
            )
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::PlaylistInvalid), "{m:?}");
        assert_eq!(m.status, Some(200));
        assert_eq!(summary(&m).segments, 0);
        assert_eq!(summary(&m).playlist_url, "");
    }

    #[tokio::test]
    async fn the_low_live_rendition_plays_from_the_live_edge_in_about_play_ms_of_real_time() {
        // A fresh site is a fresh live stream: segment n is published (n+1) s after it
        // started, so the first playlist lists none and start-up needs 2.5 s of media,
        // the third segment, published at 3 s. Reloads come a target duration (1 s)
        // after the last one began, so each finds the segment published since. Four
        // seconds of media end with segment 3, published at 4 s: the session takes
        // about play_ms. The lower bounds are the stream's clock (nothing can come
        // sooner); the upper ones only catch a session that waits for nothing, with
        // room for a loaded machine (a timed test must not fail on a slow one).
        let site = site(5).await;
        let url = format!("{}{LIVE_MASTER_PATH}", site.origin());
        let started = Instant::now();
        let m = local_engine()
            .measure_video(&url, &within(20_000), session(4_000, Some(2_000)))
            .await;
        let took = started.elapsed();
        assert_eq!(m.error, None, "{m:?}");
        let s = summary(&m);
        assert_eq!(
            s.playlist_url,
            format!("{}/video/live/low/index.m3u8", site.origin())
        );
        assert_eq!(s.bitrate_bps, Some(RENDITIONS[0].bitrate_bps));
        assert_eq!((s.segments, s.played_ms), (4, 4_000), "{s:?}");
        assert_eq!((s.stalls, s.stall_us), (0, 0), "{s:?}");
        assert!(
            s.startup_us >= 2_900_000 && s.startup_us < 10_000_000,
            "start-up waits for the third segment's publication: {s:?}"
        );
        let t = m.timings_us;
        assert_consistent(t);
        assert!(
            t.total >= 3_900_000 && t.total < 15_000_000,
            "about play_ms of real time: {t:?}"
        );
        assert!(took >= Duration::from_millis(3_900), "{took:?}");
        // Every reload's bytes count: at least one playlist load a segment (the
        // shortest playlist is the empty one), besides the master and the segments.
        let empty = stream::live_media(Duration::ZERO).len();
        let rest =
            m.bytes as usize - stream::master().len() - 4 * stream::segment_bytes(RENDITIONS[0]);
        assert!(rest >= 4 * empty, "{} bytes of playlists", rest);
        assert_eq!(m.bytes, m.bytes_decoded);
        assert_eq!(
            site.connections().accepted,
            1,
            "reloads on the same connection"
        );
    }

    #[tokio::test]
    async fn live_dash_plays_from_the_live_edge_in_about_play_ms_of_real_time() {
        // As the HLS live stream: segment n is published (n+1) s after the site
        // started, so start-up waits for the third (3 s) and four seconds of media end
        // with the fourth (4 s). The timeline MPD is reloaded each second for the next
        // segment; the @duration one tells when each is published, and is loaded once.
        let play = async |path: &'static str| {
            let site = site(5).await;
            let url = format!("{}{path}", site.origin());
            let started = Instant::now();
            let m = local_engine()
                .measure_video(&url, &within(20_000), session(4_000, Some(2_000)))
                .await;
            (m, started.elapsed(), site)
        };
        let ((timeline, timeline_took, timeline_site), (numbered, numbered_took, numbered_site)) = tokio::join!(
            play(stream::LIVE_DASH_PATH),
            play(stream::LIVE_DASH_NUMBERED_PATH)
        );
        for (m, took, site, path) in [
            (
                &timeline,
                timeline_took,
                &timeline_site,
                stream::LIVE_DASH_PATH,
            ),
            (
                &numbered,
                numbered_took,
                &numbered_site,
                stream::LIVE_DASH_NUMBERED_PATH,
            ),
        ] {
            assert_eq!(m.error, None, "{path}: {m:?}");
            let s = summary(m);
            assert_eq!(s.playlist_url, format!("{}{path}", site.origin()));
            assert_eq!(s.bitrate_bps, Some(RENDITIONS[0].bitrate_bps));
            assert_eq!((s.segments, s.played_ms), (4, 4_000), "{path}: {s:?}");
            assert_eq!((s.stalls, s.stall_us), (0, 0), "{path}: {s:?}");
            assert!(
                s.startup_us >= 2_900_000 && s.startup_us < 10_000_000,
                "{path}: start-up waits for the third segment's publication: {s:?}"
            );
            assert_consistent(m.timings_us);
            assert!(took >= Duration::from_millis(3_900), "{path}: {took:?}");
            assert!(took < Duration::from_secs(15), "{path}: {took:?}");
            assert_eq!(site.connections().accepted, 1, "{path}: one connection");
        }
        // Bytes: the MPD loads, the initialisation and four segments. The timeline MPD
        // is loaded about once a segment, the numbered one once or twice (the first
        // load names no published segment yet).
        let media = INIT_BYTES + 4 * stream::segment_bytes(RENDITIONS[0]);
        let mpds = |m: &Measurement| m.bytes as usize - media;
        let one_mpd = stream::live_mpd(Duration::ZERO, std::time::SystemTime::now(), false).len();
        // (and the site's time, read once).
        assert!(mpds(&numbered) <= 2 * one_mpd + 64, "{}", mpds(&numbered));
        assert!(mpds(&timeline) >= 4 * one_mpd / 2, "{}", mpds(&timeline));
    }

    #[tokio::test]
    async fn a_live_dash_session_times_segments_by_the_origins_clock_when_the_mpd_says_it() {
        // An origin whose clock runs 5 s ahead of the agent's starts a live stream now:
        // by its clock the stream started 5 s later than the agent's clock says, so an
        // agent that trusted its own clock would wait 5 s for segments already there
        // (and call the wait a stall or a slow start). The MPD's UTCTiming names a URL
        // answering the origin's time: with it, the session starts as soon as three
        // segments are published (3 s), without it 5 s later.
        use std::time::SystemTime;
        const AHEAD: Duration = Duration::from_secs(5);
        let iso = |t: SystemTime| {
            chrono::DateTime::<chrono::Utc>::from(t)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let origin_start = SystemTime::now() + AHEAD;
        let origin = |utc_timing: bool| {
            let timing = if utc_timing {
                r#"<UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-iso:2014" value="/time"/>"#
            } else {
                ""
            };
            let mpd = format!(
                r#"<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic"
                   availabilityStartTime="{}" minimumUpdatePeriod="PT1S">
                   <Period id="p" start="PT0S"><AdaptationSet contentType="video">
                   <SegmentTemplate timescale="1000" duration="1000" startNumber="0" media="v/seg$Number$.m4s"/>
                   <Representation id="v" bandwidth="100000"/></AdaptationSet></Period>{timing}</MPD>"#,
                iso(origin_start)
            );
            let mut routes = vec![
                ("/live.mpd".to_owned(), Route::Body(mpd.into_bytes())),
                (
                    "/time".to_owned(),
                    Route::Dynamic(Arc::new(move || {
                        iso(SystemTime::now() + AHEAD).into_bytes()
                    })),
                ),
            ];
            for n in 0..20 {
                routes.push((format!("/v/seg{n}.m4s"), Route::Body(vec![7; 1_000])));
            }
            routes
        };
        let play = async |utc_timing: bool| play_live_mpd(origin(utc_timing)).await;
        let (read, trusted) = tokio::join!(play(true), play(false));
        for m in [&read, &trusted] {
            assert_eq!(m.error, None, "{m:?}");
            assert_eq!((summary(m).segments, summary(m).played_ms), (4, 4_000));
        }
        let (read, trusted) = (summary(&read), summary(&trusted));
        eprintln!("origin clock read: {read:?}\nagent's clock trusted: {trusted:?}");
        assert!(
            read.startup_us >= 2_900_000 && read.startup_us < 5_500_000,
            "the third segment is published 3 s after the start: {read:?}"
        );
        assert!(
            trusted.startup_us >= 7_900_000,
            "by the agent's clock, 8 s: {trusted:?}"
        );
    }

    #[tokio::test]
    async fn behind_a_dsl_line_the_high_live_rendition_stalls() {
        // A 30 Mbit/s segment takes ~1.9 s over 16 Mbit/s, more than the second in
        // which the next is published: playback starts with the third (~6.8 s) and
        // the buffer runs dry before the sixth arrives.
        let site = site(5).await;
        let link = dsl_line_to(&site).await;
        let url = format!("http://{}{LIVE_MASTER_PATH}", link.addr());
        let m = local_engine()
            .measure_video(&url, &within(60_000), session(6_000, None))
            .await;
        assert_eq!(m.error, None, "{m:?}");
        assert_consistent(m.timings_us);
        let s = summary(&m);
        eprintln!(
            "live {} kbit/s over 16 Mbit/s, 40 ms: startup {:.1} ms, {} stall(s), {:.1} ms \
             stalled, {} segments in {:.1} ms, {} bytes\n{}",
            s.bitrate_bps.unwrap_or(0) / 1000,
            s.startup_us as f64 / 1000.0,
            s.stalls,
            s.stall_us as f64 / 1000.0,
            s.segments,
            m.timings_us.total as f64 / 1000.0,
            m.bytes,
            crate::cli::video_table(&m, s)
        );
        assert_eq!(s.bitrate_bps, Some(30_000_000));
        assert_eq!((s.segments, s.played_ms), (6, 6_000), "{s:?}");
        assert!(s.stalls >= 1 && s.stall_us > 0, "{s:?}");
        assert!(s.startup_us > 4_000_000, "{s:?}");
    }

    /// A live media playlist of one-second segments `s<n>.ts` from `sequence`.
    fn live_playlist(sequence: u64, count: u64) -> Vec<u8> {
        let mut text =
            format!("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:{sequence}\n");
        for n in sequence..sequence + count {
            text.push_str(&format!("#EXTINF:1.0,\ns{n}.ts\n"));
        }
        text.into_bytes()
    }

    #[tokio::test]
    async fn a_live_playlist_that_scrolls_off_faster_than_it_is_fetched_fails_as_http() {
        // Each load of the playlist is a hundred segments on: by the first reload the
        // segment after the three fetched is long gone.
        let loads = Arc::new(AtomicUsize::new(0));
        let counted = loads.clone();
        let origin = Files::start(vec![
            (
                "/live.m3u8",
                Route::Dynamic(Arc::new(move || {
                    let k = counted.fetch_add(1, Ordering::SeqCst) as u64;
                    live_playlist(100 * k, 3)
                })),
            ),
            ("/s0.ts", Route::Body(vec![0; 1_000])),
            ("/s1.ts", Route::Body(vec![1; 1_000])),
            ("/s2.ts", Route::Body(vec![2; 1_000])),
        ])
        .await;
        let url = origin.url("/live.m3u8");
        let m = local_engine()
            .measure_video(&url, &within(10_000), session(10_000, None))
            .await;
        failed_with(&m, ErrorKind::Http, &["segment 3 ", "scrolled off"]);
        assert_eq!(loads.load(Ordering::SeqCst), 2, "one load, one reload");
        let s = summary(&m);
        assert_eq!(s.segments, 3, "{s:?}");
        assert!(s.played_ms <= 3_000, "{s:?}");
        let playlists = live_playlist(0, 3).len() + live_playlist(100, 3).len();
        assert_eq!(m.bytes, (playlists + 3_000) as u64, "the reload counts");
        assert!(
            m.timings_us.total >= 1_000_000,
            "the reload came a target duration after the first load"
        );
        assert_consistent(m.timings_us);
    }

    #[test]
    fn a_live_playlist_reloaded_less_often_than_hourly_is_refused() {
        let base = Url::parse("http://x/live.m3u8").unwrap();
        let at = |target: u64| {
            media(&format!(
                "#EXTM3U\n#EXT-X-TARGETDURATION:{target}\n#EXTINF:1,\na.ts\n"
            ))
        };
        assert!(check_live(&at(6), &base).is_ok());
        for target in [3_601, 9_223_372_036_854_775_808] {
            let e = check_live(&at(target), &base).unwrap_err();
            assert_eq!(e.kind, ErrorKind::PlaylistInvalid, "{e:?}");
            assert!(e.message.contains("at most 3600 s"), "{e:?}");
        }
        // A range header for a range that ends at the last addressable byte.
        let last = ByteRange {
            offset: u64::MAX,
            length: 2,
        };
        assert_eq!(last.header(), format!("bytes={}-{}", u64::MAX, u64::MAX));
    }

    /// A live MPD started `ago` before now on the agent's clock, of 1 s segments
    /// (`$Number$` from 0 under /v/), whose video set has `timeline` and whose root
    /// ends with `tail`.
    fn live_mpd_of(ago: Duration, timeline: &str, tail: &str) -> Vec<u8> {
        let start = chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now() - ago)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        format!(
            r#"<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic"
               availabilityStartTime="{start}" minimumUpdatePeriod="PT1S">
               <Period id="p" start="PT0S"><AdaptationSet contentType="video">
               <SegmentTemplate timescale="1000" startNumber="0" media="v/seg$Number$.m4s" {timeline}
               <Representation id="v" bandwidth="100000"/></AdaptationSet></Period>{tail}</MPD>"#
        )
        .into_bytes()
    }

    /// Forty one-second segments under /v/, and `mpd` at /live.mpd.
    fn with_mpd(mpd: Vec<u8>) -> Vec<(String, Route)> {
        let mut routes: Vec<(String, Route)> = (0..40)
            .map(|n| (format!("/v/seg{n}.m4s"), Route::Body(vec![7; 1_000])))
            .collect();
        routes.push(("/live.mpd".into(), Route::Body(mpd)));
        routes
    }

    /// Four seconds of the live presentation at `/live.mpd` among `routes`, within 30 s.
    async fn play_live_mpd(routes: Vec<(String, Route)>) -> Measurement {
        let files = Files::start(
            routes
                .iter()
                .map(|(p, r)| (p.as_str(), r.clone()))
                .collect(),
        )
        .await;
        local_engine()
            .measure_video(
                &files.url("/live.mpd"),
                &within(30_000),
                session(4_000, None),
            )
            .await
    }

    #[tokio::test]
    async fn a_playlist_of_megabytes_is_refused_before_it_is_parsed() {
        let mut huge = b"#EXTM3U\n".to_vec();
        huge.resize(5 << 20, b'#');
        let files = Files::start(vec![("/huge.m3u8", Route::Body(huge))]).await;
        let m = local_engine()
            .measure_video(
                &files.url("/huge.m3u8"),
                &within(30_000),
                session(4_000, None),
            )
            .await;
        failed_with(
            &m,
            ErrorKind::PlaylistInvalid,
            &["larger than a playlist or MPD can be"],
        );
    }

    #[tokio::test]
    async fn a_live_segment_announced_far_ahead_fails_the_mpd_not_the_line() {
        // Ten segments published, then one the timeline places a year on: the session
        // plays the published ones behind the edge, and refuses to wait a year (it had
        // waited for the session's time limit and reported a timeout with a stall).
        let year_ms = 365 * 24 * 3_600 * 1_000u64;
        let timeline = format!(
            r#"><SegmentTimeline><S t="0" d="1000" r="9"/><S t="{year_ms}" d="1000"/></SegmentTimeline></SegmentTemplate>"#
        );
        let m = play_live_mpd(with_mpd(live_mpd_of(
            Duration::from_secs(20),
            &timeline,
            "",
        )))
        .await;
        failed_with(&m, ErrorKind::PlaylistInvalid, &["publishes it only in"]);
        assert!(
            summary(&m).segments >= 1,
            "the published ones played: {m:?}"
        );
    }

    #[tokio::test]
    async fn a_clock_source_that_never_answers_leaves_the_agents_clock_in_charge() {
        // The UTCTiming URL accepts connections and never answers: after a short wait
        // the session plays by the agent's clock (it had waited for the session's time
        // limit and failed as a timeout of the clock's request).
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            for _ in 0..4 {
                let Ok((conn, _)) = silent.accept().await else {
                    break;
                };
                open.push(conn);
            }
            std::future::pending::<()>().await;
        });
        let tail = format!(
            r#"<UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-iso:2014" value="http://{silent_addr}/time"/>"#
        );
        let m = play_live_mpd(with_mpd(live_mpd_of(
            Duration::from_secs(10),
            r#"duration="1000"/>"#,
            &tail,
        )))
        .await;
        held.abort();
        assert_eq!(m.error, None, "{m:?}");
        assert_eq!((summary(&m).segments, summary(&m).played_ms), (4, 4_000));
    }

    #[tokio::test]
    async fn a_live_stream_that_stops_advancing_fails_after_a_bounded_number_of_reloads() {
        // One segment, listed for ever: 2 s of media never come. After the first load
        // (a change) the reload waits 1 s, after each unchanged one 0.5 s, and the
        // session gives up after max_reloads (8 for 2 s at a 1 s target).
        let loads = Arc::new(AtomicUsize::new(0));
        let counted = loads.clone();
        let origin = Files::start(vec![
            (
                "/live.m3u8",
                Route::Dynamic(Arc::new(move || {
                    counted.fetch_add(1, Ordering::SeqCst);
                    live_playlist(0, 1)
                })),
            ),
            ("/s0.ts", Route::Body(vec![0; 1_000])),
        ])
        .await;
        let m = local_engine()
            .measure_video(
                &origin.url("/live.m3u8"),
                &within(20_000),
                session(2_000, None),
            )
            .await;
        failed_with(&m, ErrorKind::Http, &["stopped advancing"]);
        let limit = max_reloads(2_000, Duration::from_secs(1));
        assert_eq!(loads.load(Ordering::SeqCst) as u64, 1 + limit);
        assert!(
            m.timings_us.total >= 1_000_000 + (limit - 1) * 500_000,
            "{:?}",
            m.timings_us
        );
        let s = summary(&m);
        assert_eq!((s.segments, s.played_ms, s.startup_us), (1, 0, 0), "{s:?}");
    }

    struct Loopback;

    impl crate::measure::Resolve for Loopback {
        fn resolve(&self, _host: &str) -> crate::measure::Resolution {
            Box::pin(async { Ok(vec!["127.0.0.1".parse().unwrap()]) })
        }
    }

    #[tokio::test]
    async fn a_forbidden_target_or_an_invalid_task_is_refused_before_any_connection() {
        let site = site(0).await;
        let m = Engine::new(EngineConfig::default())
            .unwrap()
            .measure_video(
                &format!("{}{MASTER_PATH}", site.origin()),
                &within(10_000),
                session(5_000, None),
            )
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::TargetForbidden), "{m:?}");
        assert_eq!(m.status, None);
        // And by a name that resolves to it (DNS rebinding).
        let m = Engine::new(EngineConfig::default())
            .unwrap()
            .with_resolver(Arc::new(Loopback))
            .measure_video(
                &format!("http://rebind.test:{}{MASTER_PATH}", site.addr().port()),
                &within(10_000),
                session(5_000, None),
            )
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::TargetForbidden), "{m:?}");
        for play_ms in [999, MAX_VIDEO_PLAY_MS + 1] {
            let m = local_engine()
                .measure_video(
                    &format!("{}{MASTER_PATH}", site.origin()),
                    &within(10_000),
                    session(play_ms, None),
                )
                .await;
            assert_eq!(kind(&m), Some(ErrorKind::InvalidTask), "{play_ms}: {m:?}");
        }
        assert_eq!(site.connections().accepted, 0, "no connection reached it");
    }

    #[tokio::test]
    async fn max_bytes_and_the_time_limit_end_a_session_as_failures() {
        let site = site(0).await;
        let url = format!("{}{MASTER_PATH}", site.origin());
        // Three low segments (250 kB each) fit in 1 MB with the playlists, a fourth
        // does not.
        let expect = Expectations {
            max_bytes: 1_000_000,
            ..within(10_000)
        };
        let m = local_engine()
            .measure_video(&url, &expect, session(12_000, Some(2_000)))
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::BodyTooLarge), "{m:?}");
        assert!(m.bytes > 1_000_000 && m.bytes < 1_250_000, "{m:?}");
        let s = summary(&m);
        assert_eq!(s.segments, 3, "{s:?}");
        assert!(
            s.played_ms <= 3_000,
            "only what arrived can have played: {s:?}"
        );
        assert_consistent(m.timings_us);

        // 400 ms of think time a request: the playlists take 800 ms, the first
        // segment would arrive after the 1 s limit.
        let slow = self::site(400).await;
        let m = local_engine()
            .measure_video(
                &format!("{}{MASTER_PATH}", slow.origin()),
                &within(1_000),
                session(12_000, Some(2_000)),
            )
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::TotalTimeout), "{m:?}");
        assert!(m.timings_us.total >= 1_000_000, "{m:?}");
        let s = summary(&m);
        assert!(s.segments < SEGMENTS as u32, "{s:?}");
        assert_consistent(m.timings_us);
    }
}
