//! MPEG-DASH presentations for video sessions: an MPD (ISO/IEC 23009-1) read into the
//! downloads a player makes, which [`crate::video`] then fetches and plays exactly as
//! it plays an HLS rendition (same connections, same [`crate::video::Player`]).
//!
//! **What is played.** A static MPD (`type="static"`, the default: video on demand)
//! is played from its first period, period after period, until `play_ms` of media (or the last
//! period ends; at most [`MAX_VIDEO_SEGMENTS`] segments). In each period the player
//! plays one representation: among the video adaptation sets (by `contentType`, else
//! `mimeType`, of the set or its representations; trick-mode sets, marked with the
//! DASH-IF `trickmode` essential property, are never played) the representation with the
//! highest `bandwidth` at or under the task's `max_bitrate_kbps`, else the lowest; no
//! limit: the highest ([`crate::video::choose_by_bandwidth`], the rule HLS variants
//! follow). A presentation without video plays its audio the same way (a radio stream).
//! Audio beside video, subtitles and thumbnails are not fetched, as HLS alternative
//! renditions are not: the session measures the rendition a check names by its bitrate.
//!
//! **Where the segments are** (section 5.3.9): a `SegmentTemplate` (its attributes
//! inherited from the period and the adaptation set, the representation's winning),
//! either with `@duration` (segments numbered from `@startNumber`, default 1, each
//! `@duration / @timescale` seconds, the last one cut at the period's end) or with a
//! `SegmentTimeline` (`<S t d r>`, `r="-1"` repeating to the period's end); its
//! `media` and `initialization` templates expand `$RepresentationID$`, `$Number$`,
//! `$Bandwidth$`, `$Time$` (with `%0Nd` widths) and `$$` ([`expand`]). Or a
//! `SegmentList` of `SegmentURL`s, each `@duration / @timescale` seconds. The
//! initialisation segment (template's `initialization` or `Initialization@sourceURL`)
//! is fetched before the period's first segment, counted in bytes and transfer, with
//! no media. URLs resolve against the chain of `BaseURL`s (MPD, period, adaptation
//! set, representation; the first of each, as a player without failover picks) from
//! the MPD's final URL.
//!
//! **Live presentations** (`type="dynamic"`, [`live_view`]) are played from the period
//! under way, with the representation chosen as above, from a `SegmentTemplate`: each
//! segment is published at `availabilityStartTime` + the period's start + the segment's
//! end (section 5.3.9.5), on the origin's clock, which the agent's wall clock stands
//! for. A `SegmentTimeline` lists the segments published so far (an open `r="-1"`
//! repeats to now); a `@duration` template names every one, so the session knows when
//! each will be published and waits for it without reloading. The session starts as an
//! HLS live one does, `suggestedPresentationDelay` (else three segments) before the end
//! of the last published segment ([`crate::video::live_start`]), follows the segments
//! by their start times, waits for each until it is published, reloads the MPD (at its
//! `minimumUpdatePeriod`, else every half segment) when the next is not listed yet, and
//! ends when the MPD becomes `static` without it; a segment that 404s when it should be
//! published is asked again three times a quarter segment apart (an origin whose clock
//! runs a little behind). **The origin's clock**: a session reads the MPD's first
//! `UTCTiming` it can ([`time_source`]: `direct`, or a GET of an `http-xsdate` or
//! `http-iso` URL, timed to the middle of its round trip) once, and keeps the offset
//! to its own clock; without one, or when it fails, the agent's clock stands for the
//! origin's. Without it, an agent whose clock ran seconds behind would wait that much
//! for every segment and report the wait as a stall of the line.
//!
//! **Refused** as `playlist_invalid`, with what it is: a body that is not an MPD, a
//! live presentation without `availabilityStartTime` or without a `SegmentTemplate`, a
//! representation that names neither segments nor an index, a `sidx` that cannot be
//! read or points to further indexes, a malformed range, a template without
//! `@duration` or timeline, a `@timescale` of 0, an unknown `$identifier$`, and a
//! period without anything to play.
//!
//! **One file, by byte ranges**: a `SegmentList`'s `mediaRange`s and an
//! `Initialization@range` are parts of a file, asked for with `Range` headers as HLS's
//! `#EXT-X-BYTERANGE`. A `SegmentBase` (the on-demand profile: one file, its segments
//! listed only in its `sidx` box) has its `indexRange` read first, as players do, and
//! its subsegments ([`indexed_pieces`]) played as byte ranges from the end of that box;
//! it is the last period a session plans (how much media it holds is known only once
//! its index is read).

use std::time::Duration;

use dash_mpd_core::{
    AdaptationSet, BaseURL, Period, Representation, SegmentList, SegmentTemplate, SegmentTimeline,
    MPD,
};
use lastmile_protocol::{MeasurementError, VideoTask, MAX_VIDEO_SEGMENTS};
use url::Url;

use crate::video::{choose_by_bandwidth, invalid, ByteRange, Piece, Plan};

/// The DASH-IF scheme of an adaptation set of trick-mode (fast-forward) frames.
const TRICK_MODE: &str = "http://dashif.org/guidelines/trickmode";

/// What a DASH session downloads, and the bitrate of the representation it plays
/// first (the `bitrate_bps` a result reports).
#[derive(Debug, PartialEq)]
pub(crate) struct DashPlan {
    pub plan: Plan,
    pub bitrate_bps: Option<u64>,
    /// A last period addressed by `SegmentBase`: its segments are known once its
    /// index is read ([`indexed_pieces`]), and come after `plan`'s pieces.
    pub indexed: Option<Indexed>,
}

/// A representation addressed by `SegmentBase`: one file, its initialisation and its
/// segments at byte ranges its `sidx` box (at `index`) lists.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Indexed {
    pub url: Url,
    pub index: ByteRange,
    pub init: Option<Piece>,
    budget: Budget,
    what: String,
}

/// Whether an MPD is a live presentation (`type="dynamic"`).
pub(crate) fn is_live(mpd: &MPD) -> bool {
    mpd.mpdtype.as_deref() == Some("dynamic")
}

/// Whether a manifest body is an MPD (XML with an `<MPD` element) rather than an HLS
/// playlist, which starts with `#EXTM3U` and never holds one.
pub(crate) fn is_mpd(body: &[u8]) -> bool {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let starts_xml = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'<');
    starts_xml && memchr::memmem::find(body, b"<MPD").is_some()
}

/// An MPD body, parsed; anything else is `playlist_invalid`.
pub(crate) fn parse(body: &[u8], url: &Url) -> Result<MPD, MeasurementError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| invalid(format!("{url} is not a DASH MPD (it is not UTF-8 text)")))?;
    dash_mpd_core::parse(text).map_err(|e| {
        invalid(format!(
            "{url} is not a DASH MPD ({} bytes of XML that do not parse as one: {e})",
            body.len()
        ))
    })
}

/// The downloads that play `task.play_ms` of the static presentation `mpd`, fetched
/// from `url` (its final URL), after checking that it can be played.
pub(crate) fn plan(mpd: &MPD, url: &Url, task: VideoTask) -> Result<DashPlan, MeasurementError> {
    if mpd.periods.is_empty() {
        return Err(invalid(format!("{url} has no Period")));
    }
    let play_us = task.play_ms.saturating_mul(1_000);
    let root = resolve(url, &mpd.base_url)?;
    let mut pieces = Vec::new();
    let mut segments = 0usize;
    let mut covered = 0u64;
    let mut bitrate_bps = None;
    for (index, period) in mpd.periods.iter().enumerate() {
        if covered >= play_us || segments >= MAX_VIDEO_SEGMENTS {
            break;
        }
        let PeriodChoice {
            name,
            set,
            rep,
            base,
        } = period_choice(url, &root, index, period, task)?;
        if bitrate_bps.is_none() {
            bitrate_bps = rep.bandwidth;
        }
        let end_us = period_end_us(mpd, index).map(|end| end.saturating_sub(start_us(period)));
        let names = Names {
            id: rep.id.as_deref().unwrap_or(""),
            bandwidth: rep.bandwidth.unwrap_or(0),
        };
        let budget = Budget {
            media_us: play_us - covered,
            segments: MAX_VIDEO_SEGMENTS - segments,
            period_us: end_us,
        };
        let what = format!("{url}: {name}, representation {:?}", names.id);
        let period_pieces = match (template_of(period, set, rep), list_of(period, set, rep)) {
            (Some(template), _) if template.media.is_some() => {
                template_pieces(&template, &names, &base, budget, &what)?
            }
            (_, Some(list)) => list_pieces(list, &base, budget, &what)?,
            _ => {
                // SegmentBase: the segments are known once the index is read, so this
                // is the last period the session plans (the media it will take from
                // this one is not known before).
                let segment_base = rep
                    .SegmentBase
                    .as_ref()
                    .or(set.SegmentBase.as_ref())
                    .or(period.SegmentBase.as_ref());
                let index = segment_base
                    .and_then(|b| b.indexRange.as_deref())
                    .ok_or_else(|| {
                        invalid(format!(
                            "{what} names neither segments (SegmentTemplate, SegmentList) nor \
                             an index (SegmentBase@indexRange)"
                        ))
                    })?;
                let index = byte_range(index, &what)?;
                let init = init_piece(
                    None,
                    segment_base.and_then(|b| b.Initialization.as_ref()),
                    &names,
                    &base,
                    &what,
                )?;
                return Ok(DashPlan {
                    plan: Plan {
                        pieces,
                        media_us: covered.min(play_us),
                    },
                    bitrate_bps,
                    indexed: Some(Indexed {
                        url: base,
                        index,
                        init,
                        budget,
                        what,
                    }),
                });
            }
        };
        if !period_pieces.iter().any(|p| p.media_us.is_some()) {
            // A period without media (cut to nothing): its initialisation would be a
            // download the session's segment budget does not count.
            continue;
        }
        for piece in period_pieces {
            if let Some(media_us) = piece.media_us {
                covered = covered.saturating_add(media_us);
                segments += 1;
            }
            pieces.push(piece);
        }
    }
    if covered == 0 {
        return Err(invalid(format!("{url}'s segments carry no media")));
    }
    Ok(DashPlan {
        plan: Plan {
            pieces,
            media_us: covered.min(play_us),
        },
        bitrate_bps,
        indexed: None,
    })
}

/// The pieces of an [`Indexed`] representation once its index range was read as
/// `index`: its initialisation segment, then the subsegments its `sidx` box lists (ISO
/// 14496-12, 8.16.3), each a byte range of the file from the first byte after the box
/// (plus the box's `first_offset`), within the representation's budget.
pub(crate) fn indexed_pieces(
    indexed: &Indexed,
    index: &[u8],
) -> Result<Vec<Piece>, MeasurementError> {
    let what = &indexed.what;
    let sidx = Sidx::find(index).ok_or_else(|| {
        invalid(format!(
            "{what}: its index range {}-{} holds no sidx box that can be read",
            indexed.index.offset,
            indexed.index.offset + indexed.index.length.max(1) - 1
        ))
    })?;
    if sidx.timescale == 0 {
        return Err(invalid(format!(
            "{what}: its sidx box has a timescale of 0"
        )));
    }
    if sidx.references.iter().any(|r| r.to_index) {
        return Err(invalid(format!(
            "{what}: its sidx box points to further sidx boxes (a hierarchical index), \
             which is not supported yet"
        )));
    }
    let mut pieces: Vec<Piece> = indexed.init.clone().into_iter().collect();
    let mut offset = indexed
        .index
        .offset
        .saturating_add(sidx.end as u64)
        .saturating_add(sidx.first_offset);
    let (mut taken, mut at_us) = (0u64, 0u64);
    for reference in sidx.references.iter().take(indexed.budget.segments) {
        if taken >= indexed.budget.media_us
            || indexed.budget.period_us.is_some_and(|end| at_us >= end)
        {
            break;
        }
        let media_us = ticks_us(f64::from(reference.duration), u64::from(sidx.timescale));
        pieces.push(Piece {
            url: indexed.url.clone(),
            media_us: Some(media_us),
            range: Some(ByteRange {
                offset,
                length: u64::from(reference.size),
            }),
        });
        offset = offset.saturating_add(u64::from(reference.size));
        taken = taken.saturating_add(media_us);
        at_us = at_us.saturating_add(media_us);
    }
    if taken == 0 {
        return Err(invalid(format!("{what}: its sidx box lists no media")));
    }
    Ok(pieces)
}

/// A segment index box, as far as a player needs it.
#[derive(Debug, PartialEq)]
struct Sidx {
    /// Where the box ends in the bytes it was read from: offsets count from there.
    end: usize,
    timescale: u32,
    first_offset: u64,
    references: Vec<SidxReference>,
}

#[derive(Debug, PartialEq)]
struct SidxReference {
    /// Points to another `sidx` box rather than to media.
    to_index: bool,
    size: u32,
    duration: u32,
}

impl Sidx {
    /// The first `sidx` box among the boxes `bytes` starts with; `None` when there is
    /// none or it is cut short.
    fn find(bytes: &[u8]) -> Option<Sidx> {
        let mut at = 0usize;
        // Bounded: every turn moves past one box of at least its 8-byte header.
        while at + 8 <= bytes.len() {
            let size = u32::from_be_bytes(bytes[at..at + 4].try_into().ok()?) as usize;
            let kind = &bytes[at + 4..at + 8];
            let (header, size) = match size {
                1 => {
                    let large = bytes.get(at + 8..at + 16)?;
                    (
                        16,
                        usize::try_from(u64::from_be_bytes(large.try_into().ok()?)).ok()?,
                    )
                }
                0 => (8, bytes.len() - at),
                n => (8, n),
            };
            if size < header {
                return None;
            }
            let end = at.checked_add(size)?;
            if end > bytes.len() {
                // A box that runs past what was read (or past any memory: a hostile
                // 64-bit size) holds no index the agent can read.
                return None;
            }
            if kind == b"sidx" {
                return Sidx::read(bytes.get(at + header..end)?, end);
            }
            at = end;
        }
        None
    }

    /// The box's body (after its header), ending at `end` in the bytes read.
    fn read(body: &[u8], end: usize) -> Option<Sidx> {
        let mut r = Reader { bytes: body, at: 0 };
        let version = r.u8()?;
        r.skip(3)?; // flags
        r.skip(4)?; // reference_ID
        let timescale = r.u32()?;
        let first_offset = if version == 0 {
            r.skip(4)?; // earliest_presentation_time
            u64::from(r.u32()?)
        } else {
            r.skip(8)?;
            r.u64()?
        };
        r.skip(2)?; // reserved
        let count = r.u16()?;
        let mut references = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let word = r.u32()?;
            let duration = r.u32()?;
            r.skip(4)?; // SAP
            references.push(SidxReference {
                to_index: word >> 31 == 1,
                size: word & 0x7fff_ffff,
                duration,
            });
        }
        Some(Sidx {
            end,
            timescale,
            first_offset,
            references,
        })
    }
}

/// A `sidx` box (for tests): `version` 0 or 1, and its references as (points to an
/// index, size, duration).
#[cfg(test)]
pub(crate) fn sidx_box(
    version: u8,
    timescale: u32,
    first_offset: u64,
    refs: &[(bool, u32, u32)],
) -> Vec<u8> {
    let mut body = vec![version, 0, 0, 0];
    body.extend(1u32.to_be_bytes());
    body.extend(timescale.to_be_bytes());
    if version == 0 {
        body.extend(0u32.to_be_bytes());
        body.extend((first_offset as u32).to_be_bytes());
    } else {
        body.extend(0u64.to_be_bytes());
        body.extend(first_offset.to_be_bytes());
    }
    body.extend(0u16.to_be_bytes());
    body.extend((refs.len() as u16).to_be_bytes());
    for &(to_index, size, duration) in refs {
        body.extend(((u32::from(to_index) << 31) | size).to_be_bytes());
        body.extend(duration.to_be_bytes());
        body.extend(0x9000_0000u32.to_be_bytes());
    }
    let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend(b"sidx");
    out.extend(body);
    out
}

/// Big-endian numbers read from the front of a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let out = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(out)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    }
}

/// A live presentation as one load of its MPD shows it: the chosen representation's
/// segments around the live edge, each with the moment it is available.
#[derive(Debug)]
pub(crate) struct LiveView {
    /// In presentation order.
    pub segments: Vec<LiveSegment>,
    /// The initialisation section (its byte range of a file, when `Initialization@range`
    /// says).
    pub init: Option<Piece>,
    pub bitrate_bps: Option<u64>,
    /// How long after this load began the MPD may be loaded again: its
    /// `minimumUpdatePeriod` (at most a segment), else half a segment.
    pub reload_after: Duration,
    /// How far behind the live edge a session starts: `suggestedPresentationDelay`,
    /// else three segments (as HLS's three target durations).
    pub delay_us: u64,
    /// The longest segment: a session waits at most about this for the next one.
    pub segment_us: u64,
    /// `false` once the presentation ended (the MPD became `static`).
    pub dynamic: bool,
}

/// One segment of a live presentation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LiveSegment {
    /// Where it starts on the presentation's timeline (its period's start and its
    /// time in the period), µs: what identifies it across loads and periods.
    pub start_us: u64,
    pub media_us: u64,
    pub url: Url,
    /// When its last byte is published (`availabilityStartTime` + the period's start +
    /// the segment's end), µs since the Unix epoch on the origin's clock.
    pub available_at_us: i64,
}

/// Where a live presentation says its origin's clock can be read (`UTCTiming`, section
/// 5.8.4.11), the first of its sources the agent reads.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TimeSource {
    /// `urn:mpeg:dash:utc:direct:2014`: the time, in the MPD itself (as of when the
    /// origin wrote it), µs since the Unix epoch.
    Direct(i64),
    /// `urn:mpeg:dash:utc:http-xsdate:2014` or `http-iso:2014`: a URL whose body is the
    /// time.
    Fetch(Url),
}

/// The live presentation's first `UTCTiming` the agent reads (`http-head` and NTP
/// sources are not read: none, and the agent's own clock stands for the origin's).
pub(crate) fn time_source(mpd: &MPD, url: &Url) -> Option<TimeSource> {
    mpd.UTCTiming.iter().find_map(|timing| {
        let value = timing.value.as_deref()?.trim();
        let scheme = timing.schemeIdUri.trim();
        match scheme.strip_prefix("urn:mpeg:dash:utc:")? {
            "direct:2014" => parse_time(value.as_bytes()).map(TimeSource::Direct),
            "http-xsdate:2014" | "http-iso:2014" => {
                // A value may list several URLs, separated by spaces: the first.
                let first = value.split_whitespace().next()?;
                url.join(first).ok().map(TimeSource::Fetch)
            }
            _ => None,
        }
    })
}

/// An xs:dateTime or ISO 8601 time (a time without a zone is UTC), µs since the Unix
/// epoch; `None` for anything else.
pub(crate) fn parse_time(body: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(body).ok()?.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_micros());
    }
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp_micros())
}

/// Segments of a live presentation looked at past the live edge: enough for any
/// session ([`MAX_VIDEO_SEGMENTS`]), and the bound of every loop over a timeline.
const LIVE_LOOKAHEAD: usize = MAX_VIDEO_SEGMENTS;

/// How far past the end of what a session played a period may start and still be
/// the one it plays next (timelines' ticks rounded to µs).
const PERIOD_SLACK_US: u64 = 500_000;

/// The live presentation `mpd` (fetched from `url`) at `now_us` (µs since the Unix
/// epoch): the representation a player limited to `task.max_bitrate_kbps` plays in
/// the period the session is in, and its segments from a little before the live edge
/// on. The period is the last that has begun by `played_to_us` (where the media the
/// session played so far ends on the presentation's timeline, µs), so a session behind
/// the edge finishes a period before the next (an ad break, a programme); before it
/// played anything, the last that has begun by now.
pub(crate) fn live_view(
    mpd: &MPD,
    url: &Url,
    task: VideoTask,
    now_us: i64,
    played_to_us: Option<u64>,
) -> Result<LiveView, MeasurementError> {
    let dynamic = mpd.mpdtype.as_deref() == Some("dynamic");
    let start = mpd
        .availabilityStartTime
        .map(|t| t.timestamp_micros())
        .ok_or_else(|| {
            invalid(format!(
                "{url} is a live DASH presentation without an availabilityStartTime"
            ))
        })?;
    let begun = |p: &Period| {
        start.saturating_add(i64::try_from(start_us(p)).unwrap_or(i64::MAX)) <= now_us
            && played_to_us.is_none_or(|to| start_us(p) <= to.saturating_add(PERIOD_SLACK_US))
    };
    let (index, period) = mpd
        .periods
        .iter()
        .enumerate()
        .rev()
        .find(|(_, p)| begun(p))
        .or_else(|| mpd.periods.first().map(|p| (0, p)))
        .ok_or_else(|| invalid(format!("{url} has no Period")))?;
    let root = resolve(url, &mpd.base_url)?;
    let PeriodChoice {
        name,
        set,
        rep,
        base,
    } = period_choice(url, &root, index, period, task)?;
    let names = Names {
        id: rep.id.as_deref().unwrap_or(""),
        bandwidth: rep.bandwidth.unwrap_or(0),
    };
    let what = format!("{url}: {name}, representation {:?}", names.id);
    let Some(template) = template_of(period, set, rep).filter(|t| t.media.is_some()) else {
        return Err(invalid(format!(
            "{what}: a live presentation is played from a SegmentTemplate, which it has not"
        )));
    };
    let media = template.media.as_deref().unwrap_or_default();
    let timescale = timescale(template.timescale, &what)?;
    let offset = template.presentationTimeOffset.unwrap_or(0);
    let period_offset_us = start_us(period);
    let period_start = start.saturating_add(i64::try_from(period_offset_us).unwrap_or(i64::MAX));
    // Where the live edge is on the period's timeline, µs.
    let now_in_period = now_us.saturating_sub(period_start).max(0) as u64;
    let init = init_piece(
        template.initialization.as_deref(),
        template.Initialization.as_ref(),
        &names,
        &base,
        &what,
    )?;
    let start_number = template.startNumber.unwrap_or(1);
    let mut segments = Vec::new();
    let push = |segments: &mut Vec<LiveSegment>,
                number: u64,
                time: u64,
                d_ticks: f64|
     -> Result<(), MeasurementError> {
        // On the presentation's timeline, so that segments of two periods compare.
        let start_us = period_offset_us
            .saturating_add(ticks_us(time.saturating_sub(offset) as f64, timescale));
        let media_us = ticks_us(d_ticks, timescale);
        if media_us == 0 {
            // Shorter than a microsecond: nothing to play, and it would not move the
            // session on.
            return Ok(());
        }
        let uri =
            expand(media, &names, number, time).map_err(|e| invalid(format!("{what}: {e}")))?;
        segments.push(LiveSegment {
            start_us,
            media_us,
            url: join(&base, &uri, &what)?,
            available_at_us: start.saturating_add(
                i64::try_from(start_us.saturating_add(media_us)).unwrap_or(i64::MAX),
            ),
        });
        Ok(())
    };
    let segment_us;
    match (&template.SegmentTimeline, template.duration) {
        (Some(timeline), _) => {
            // The listed segments, the last LIVE_LOOKAHEAD of them; an open repeat runs
            // to what is available now. Counted first with arithmetic alone, then only
            // the kept ones made (a URL each): a timeline of many long runs costs its
            // length, not its length times the lookahead.
            let now_ticks =
                offset.saturating_add((now_in_period as f64 / 1e6 * timescale as f64) as u64);
            let runs = timeline_runs(timeline, offset, start_number, now_ticks, &what)?;
            let longest = runs.iter().map(|r| r.d).max().unwrap_or(0);
            let mut left = LIVE_LOOKAHEAD as u64;
            let mut kept = Vec::new();
            for run in runs.iter().rev() {
                if left == 0 {
                    break;
                }
                let keep = run.count.min(left);
                left -= keep;
                kept.push((run, run.count - keep, keep));
            }
            for (run, skip, keep) in kept.into_iter().rev() {
                for k in skip..skip + keep {
                    let time = run.time.saturating_add(k.saturating_mul(run.d));
                    push(
                        &mut segments,
                        run.number.saturating_add(k),
                        time,
                        run.d as f64,
                    )?;
                }
            }
            segment_us = ticks_us(longest as f64, timescale);
        }
        (None, Some(duration)) if duration > 0.0 && duration.is_finite() => {
            // Every segment is known: from a little before the live edge to as far as
            // any session plays.
            segment_us = ticks_us(duration, timescale).max(1);
            let available = (now_in_period / segment_us).saturating_sub(1);
            let back = (delay_of(mpd, segment_us) / segment_us).saturating_add(2);
            let first = available.saturating_sub(back);
            let ahead = (task.play_ms.saturating_mul(1_000) / segment_us)
                .saturating_add(back.saturating_add(2))
                .min(LIVE_LOOKAHEAD as u64);
            for k in first..first.saturating_add(ahead) {
                let time = offset.saturating_add((k as f64 * duration).round() as u64);
                push(
                    &mut segments,
                    start_number.saturating_add(k),
                    time,
                    duration,
                )?;
            }
        }
        _ => {
            return Err(invalid(format!(
                "{what} has a SegmentTemplate with neither @duration nor a SegmentTimeline"
            )))
        }
    }
    // No longer than a segment either: packagers write long update periods (ffmpeg's
    // 500 s) for MPDs that a player waiting for its next segment reloads all the same.
    let segment = Duration::from_micros(segment_us);
    let reload_after = mpd
        .minimumUpdatePeriod
        .filter(|p| !p.is_zero())
        .unwrap_or(segment / 2)
        .min(segment)
        .clamp(Duration::from_millis(100), Duration::from_secs(30));
    Ok(LiveView {
        segments,
        init,
        bitrate_bps: rep.bandwidth,
        reload_after,
        delay_us: delay_of(mpd, segment_us),
        segment_us,
        dynamic,
    })
}

/// `<S>` elements a timeline may have: a day of 1 s segments written one `<S>` each.
const MAX_TIMELINE_ENTRIES: usize = 100_000;

/// A run of equal segments in a live timeline: `count` of `d` ticks from `time`,
/// numbered from `number`.
struct Run {
    time: u64,
    number: u64,
    d: u64,
    count: u64,
}

/// A live timeline's `<S>` elements as runs: each is `r + 1` segments (`r` absent: one)
/// of `d` ticks from `t` (absent: where the last one ended); a negative `r` repeats
/// until the next `<S t>` or, for the last, until `now_ticks`.
fn timeline_runs(
    timeline: &SegmentTimeline,
    offset: u64,
    start_number: u64,
    now_ticks: u64,
    what: &str,
) -> Result<Vec<Run>, MeasurementError> {
    if timeline.segments.len() > MAX_TIMELINE_ENTRIES {
        return Err(invalid(format!(
            "{what} has a SegmentTimeline of {} entries (at most {MAX_TIMELINE_ENTRIES})",
            timeline.segments.len()
        )));
    }
    let mut runs = Vec::with_capacity(timeline.segments.len());
    let (mut time, mut number) = (offset, start_number);
    for (i, s) in timeline.segments.iter().enumerate() {
        if s.d == 0 {
            continue;
        }
        if let Some(t) = s.t {
            time = t;
        }
        let repeats = match s.r {
            None => 0,
            Some(r) if r >= 0 => r as u64,
            Some(_) => {
                let until = timeline
                    .segments
                    .get(i + 1)
                    .and_then(|next| next.t)
                    .unwrap_or(now_ticks);
                (until.saturating_sub(time) / s.d).saturating_sub(1)
            }
        };
        let count = repeats.saturating_add(1);
        runs.push(Run {
            time,
            number,
            d: s.d,
            count,
        });
        time = time.saturating_add(count.saturating_mul(s.d));
        number = number.saturating_add(count);
    }
    Ok(runs)
}

/// How far behind the live edge a session starts: `suggestedPresentationDelay`, else
/// three segments.
fn delay_of(mpd: &MPD, segment_us: u64) -> u64 {
    mpd.suggestedPresentationDelay
        .map(micros)
        .filter(|d| *d > 0)
        .unwrap_or(segment_us.saturating_mul(3))
}

/// What a session plays of a period: the adaptation set and representation chosen,
/// the period's name for messages, and the representation's base URL.
struct PeriodChoice<'a> {
    name: String,
    set: &'a AdaptationSet,
    rep: &'a Representation,
    base: Url,
}

/// The representation a player limited to `task.max_bitrate_kbps` plays in `period`
/// (the MPD's `index`-th, of the MPD at `url` whose own base is `root`), with its base
/// URL along the chain of `BaseURL`s.
fn period_choice<'a>(
    url: &Url,
    root: &Url,
    index: usize,
    period: &'a Period,
    task: VideoTask,
) -> Result<PeriodChoice<'a>, MeasurementError> {
    let name = period.id.as_deref().map_or_else(
        || format!("period {}", index + 1),
        |id| format!("period {id:?}"),
    );
    let (set, rep) = choose(period, task.max_bitrate_kbps).ok_or_else(|| {
        invalid(format!(
            "{url}: {name} has no video or audio representation to play"
        ))
    })?;
    let base = resolve(root, &period.BaseURL)?;
    let base = resolve(&base, &set.BaseURL)?;
    let base = resolve(&base, &rep.BaseURL)?;
    Ok(PeriodChoice {
        name,
        set,
        rep,
        base,
    })
}

/// What the session may still take from a period: media, segments, and the period's
/// own length when the MPD says it (µs).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Budget {
    media_us: u64,
    segments: usize,
    period_us: Option<u64>,
}

/// A representation's values a template names.
struct Names<'a> {
    id: &'a str,
    bandwidth: u64,
}

/// The adaptation set and representation a player limited to `max_bitrate_kbps` plays
/// in `period`: video if there is any, else audio.
fn choose(
    period: &Period,
    max_bitrate_kbps: Option<u64>,
) -> Option<(&AdaptationSet, &Representation)> {
    for wanted in ["video", "audio"] {
        let candidates: Vec<(&AdaptationSet, &Representation)> = period
            .adaptations
            .iter()
            .filter(|set| !is_trick_mode(set))
            .flat_map(|set| set.representations.iter().map(move |rep| (set, rep)))
            .filter(|(set, rep)| content_of(set, rep) == Some(wanted))
            .collect();
        let bandwidths: Vec<u64> = candidates
            .iter()
            .map(|(_, rep)| rep.bandwidth.unwrap_or(0))
            .collect();
        if let Some(index) = choose_by_bandwidth(&bandwidths, max_bitrate_kbps) {
            return Some(candidates[index]);
        }
    }
    None
}

fn is_trick_mode(set: &AdaptationSet) -> bool {
    set.essential_property
        .iter()
        .any(|p| p.schemeIdUri == TRICK_MODE)
}

/// `"video"`, `"audio"` or something else a representation carries, by the first of
/// its and its set's `contentType` and `mimeType` that says.
fn content_of<'a>(set: &'a AdaptationSet, rep: &'a Representation) -> Option<&'a str> {
    let declared = rep
        .contentType
        .as_deref()
        .or(set.contentType.as_deref())
        .or_else(|| {
            rep.mimeType
                .as_deref()
                .or(set.mimeType.as_deref())
                .and_then(|mime| mime.split('/').next())
        })?;
    match declared.trim() {
        "video" => Some("video"),
        "audio" => Some("audio"),
        _ => Some("other"),
    }
}

/// `base` joined with the first of `urls` (none: `base`).
fn resolve(base: &Url, urls: &[BaseURL]) -> Result<Url, MeasurementError> {
    match urls.first() {
        Some(url) if !url.base.trim().is_empty() => {
            let joined = base.join(url.base.trim()).map_err(|e| {
                invalid(format!(
                    "{base} names an invalid BaseURL {:?}: {e}",
                    url.base
                ))
            })?;
            crate::video::fetchable(joined, &format!("{base}: a BaseURL"))
        }
        _ => Ok(base.clone()),
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn start_us(period: &Period) -> u64 {
    period.start.map_or(0, micros)
}

/// Where the period at `index` ends on the presentation's timeline (µs): its
/// `@duration` after its start, else the next period's start, else the presentation's
/// duration; `None` when the MPD does not say.
fn period_end_us(mpd: &MPD, index: usize) -> Option<u64> {
    let period = &mpd.periods[index];
    if let Some(duration) = period.duration {
        return Some(start_us(period).saturating_add(micros(duration)));
    }
    if let Some(next) = mpd.periods.get(index + 1).and_then(|p| p.start) {
        return Some(micros(next));
    }
    mpd.mediaPresentationDuration.map(micros)
}

/// The segment template in effect for `rep`: the representation's attributes over the
/// adaptation set's over the period's (section 5.3.9.1).
fn template_of(
    period: &Period,
    set: &AdaptationSet,
    rep: &Representation,
) -> Option<SegmentTemplate> {
    let levels = [
        &period.SegmentTemplate,
        &set.SegmentTemplate,
        &rep.SegmentTemplate,
    ];
    let mut merged: Option<SegmentTemplate> = None;
    for level in levels.into_iter().flatten() {
        let base = merged.get_or_insert_with(SegmentTemplate::default);
        macro_rules! inherit {
            ($($field:ident),*) => {$(
                if level.$field.is_some() {
                    base.$field = level.$field.clone();
                }
            )*};
        }
        inherit!(
            media,
            initialization,
            startNumber,
            duration,
            timescale,
            presentationTimeOffset,
            Initialization,
            SegmentTimeline
        );
    }
    merged
}

/// The segment list in effect for `rep`: the most specific one.
fn list_of<'a>(
    period: &'a Period,
    set: &'a AdaptationSet,
    rep: &'a Representation,
) -> Option<&'a SegmentList> {
    rep.SegmentList
        .as_ref()
        .or(set.SegmentList.as_ref())
        .or(period.SegmentList.as_ref())
}

/// A timescale, which must not be 0.
fn timescale(value: Option<u64>, what: &str) -> Result<u64, MeasurementError> {
    match value.unwrap_or(1) {
        0 => Err(invalid(format!("{what} has a timescale of 0"))),
        t => Ok(t),
    }
}

/// `ticks` of a `timescale`, µs.
fn ticks_us(ticks: f64, timescale: u64) -> u64 {
    (ticks / timescale as f64 * 1e6)
        .round()
        .clamp(0.0, u64::MAX as f64) as u64
}

/// The initialisation segment a template or list names, as a piece without media.
fn init_piece(
    template: Option<&str>,
    element: Option<&dash_mpd_core::Initialization>,
    names: &Names,
    base: &Url,
    what: &str,
) -> Result<Option<Piece>, MeasurementError> {
    let range = element
        .and_then(|e| e.range.as_deref())
        .map(|r| byte_range(r, what))
        .transpose()?;
    let url = match (template, element.and_then(|e| e.sourceURL.as_deref())) {
        (Some(template), _) => {
            let uri = expand(template, names, 0, 0).map_err(|e| invalid(format!("{what}: {e}")))?;
            join(base, &uri, what)?
        }
        (None, Some(source)) => join(base, source, what)?,
        // A range of the representation's own file (its BaseURL).
        (None, None) if range.is_some() => base.clone(),
        (None, None) => return Ok(None),
    };
    Ok(Some(Piece {
        url,
        media_us: None,
        range,
    }))
}

fn join(base: &Url, uri: &str, what: &str) -> Result<Url, MeasurementError> {
    let joined = base
        .join(uri.trim())
        .map_err(|e| invalid(format!("{what} names an invalid URL {uri:?}: {e}")))?;
    crate::video::fetchable(joined, what)
}

/// A `range` attribute (`first-last`, bytes, inclusive).
fn byte_range(range: &str, what: &str) -> Result<ByteRange, MeasurementError> {
    let parsed = range.trim().split_once('-').and_then(|(first, last)| {
        let (first, last) = (
            first.trim().parse::<u64>().ok()?,
            last.trim().parse::<u64>().ok()?,
        );
        // 0-(2^64 - 1) is 2^64 bytes: a length with no number.
        let length = last.checked_sub(first)?.checked_add(1)?;
        Some(ByteRange {
            offset: first,
            length,
        })
    });
    parsed.ok_or_else(|| {
        invalid(format!(
            "{what} has a byte range {range:?} that is not first-last"
        ))
    })
}

/// The pieces of a `SegmentTemplate` with `media`: its initialisation segment, then
/// numbered (`@duration`) or timed (`SegmentTimeline`) segments within `budget`.
fn template_pieces(
    template: &SegmentTemplate,
    names: &Names,
    base: &Url,
    budget: Budget,
    what: &str,
) -> Result<Vec<Piece>, MeasurementError> {
    let media = template.media.as_deref().unwrap_or_default();
    let timescale = timescale(template.timescale, what)?;
    let start_number = template.startNumber.unwrap_or(1);
    let mut pieces: Vec<Piece> = init_piece(
        template.initialization.as_deref(),
        template.Initialization.as_ref(),
        names,
        base,
        what,
    )?
    .into_iter()
    .collect();
    let times: Vec<(u64, u64)> = match (&template.SegmentTimeline, template.duration) {
        (Some(timeline), _) if timeline.segments.len() > MAX_TIMELINE_ENTRIES => {
            return Err(invalid(format!(
                "{what} has a SegmentTimeline of {} entries (at most {MAX_TIMELINE_ENTRIES})",
                timeline.segments.len()
            )))
        }
        (Some(timeline), _) => timeline_segments(
            timeline,
            timescale,
            template.presentationTimeOffset.unwrap_or(0),
            budget,
        ),
        (None, Some(duration)) if duration > 0.0 && duration.is_finite() => {
            numbered_segments(duration, timescale, budget)
        }
        _ => {
            return Err(invalid(format!(
                "{what} has a SegmentTemplate with neither @duration nor a SegmentTimeline"
            )))
        }
    };
    for (i, (time, media_us)) in times.into_iter().enumerate() {
        let number = start_number.saturating_add(i as u64);
        let uri =
            expand(media, names, number, time).map_err(|e| invalid(format!("{what}: {e}")))?;
        pieces.push(Piece {
            url: join(base, &uri, what)?,
            media_us: Some(media_us),
            range: None,
        });
    }
    Ok(pieces)
}

/// Segments of `duration` ticks each, as (time in ticks, media µs), the last one cut
/// at the period's end, within `budget`.
fn numbered_segments(duration: f64, timescale: u64, budget: Budget) -> Vec<(u64, u64)> {
    let each_us = ticks_us(duration, timescale).max(1);
    let mut out = Vec::new();
    let mut at_us = 0u64;
    let mut taken = 0u64;
    while out.len() < budget.segments && taken < budget.media_us {
        let media_us = match budget.period_us {
            Some(end) if at_us >= end => break,
            Some(end) => each_us.min(end - at_us),
            None => each_us,
        };
        let time = (out.len() as f64 * duration).round() as u64;
        out.push((time, media_us));
        at_us = at_us.saturating_add(each_us);
        taken = taken.saturating_add(media_us);
    }
    out
}

/// A timeline's segments as (time in ticks, media µs) within `budget`: each `<S>` is
/// `r + 1` segments of `d` ticks from `t` (or where the last one ended); `r="-1"`
/// repeats until the next `<S t>` or the period's end.
fn timeline_segments(
    timeline: &SegmentTimeline,
    timescale: u64,
    offset: u64,
    budget: Budget,
) -> Vec<(u64, u64)> {
    let end_ticks = budget
        .period_us
        .map(|us| offset.saturating_add((us as f64 / 1e6 * timescale as f64).round() as u64));
    let mut out = Vec::new();
    let mut taken = 0u64;
    let mut time = offset;
    for (index, s) in timeline.segments.iter().enumerate() {
        if s.d == 0 {
            continue;
        }
        if let Some(t) = s.t {
            time = t;
        }
        let until = match s.r {
            Some(r) if r < 0 => timeline
                .segments
                .get(index + 1)
                .and_then(|next| next.t)
                .or(end_ticks),
            _ => None,
        };
        let count = match s.r {
            Some(r) if r >= 0 => Some((r as u64).saturating_add(1)),
            Some(_) => None,
            None => Some(1),
        };
        let mut made = 0u64;
        loop {
            if out.len() >= budget.segments || taken >= budget.media_us {
                return out;
            }
            if count.is_some_and(|c| made >= c) || until.is_some_and(|u| time >= u) {
                break;
            }
            // An open-ended repeat with no end in the MPD (`r="-1"`, nothing after
            // it) makes as many as the budget takes: every turn makes one.
            let media_us = ticks_us(s.d as f64, timescale);
            out.push((time, media_us));
            taken = taken.saturating_add(media_us);
            time = time.saturating_add(s.d);
            made += 1;
        }
    }
    out
}

/// The pieces of a `SegmentList`: its initialisation segment, then its `SegmentURL`s,
/// each `@duration` ticks, within `budget`.
fn list_pieces(
    list: &SegmentList,
    base: &Url,
    budget: Budget,
    what: &str,
) -> Result<Vec<Piece>, MeasurementError> {
    let names = Names {
        id: "",
        bandwidth: 0,
    };
    let mut pieces: Vec<Piece> =
        init_piece(None, list.Initialization.as_ref(), &names, base, what)?
            .into_iter()
            .collect();
    let timescale = timescale(list.timescale, what)?;
    let durations: Vec<u64> = match (&list.SegmentTimeline, list.duration) {
        (Some(timeline), _) => timeline_segments(timeline, timescale, 0, budget)
            .into_iter()
            .map(|(_, us)| us)
            .collect(),
        (None, Some(duration)) if duration > 0 => {
            vec![ticks_us(duration as f64, timescale); list.segment_urls.len()]
        }
        _ => {
            return Err(invalid(format!(
                "{what} has a SegmentList with neither @duration nor a SegmentTimeline"
            )))
        }
    };
    let mut taken = 0u64;
    for (segment, media_us) in list
        .segment_urls
        .iter()
        .zip(durations)
        .take(budget.segments)
    {
        if taken >= budget.media_us {
            break;
        }
        let range = segment
            .mediaRange
            .as_deref()
            .map(|r| byte_range(r, what))
            .transpose()?;
        // No @media: the segment is (a range of) the BaseURL itself.
        let url = match segment.media.as_deref() {
            Some(media) => join(base, media, what)?,
            None => base.clone(),
        };
        pieces.push(Piece {
            url,
            media_us: Some(media_us),
            range,
        });
        taken = taken.saturating_add(media_us);
    }
    Ok(pieces)
}

/// A template (section 5.3.9.4.4) with its identifiers replaced: `$RepresentationID$`,
/// `$Number$`, `$Bandwidth$`, `$Time$` (the last three with an optional `%0Nd` width)
/// and `$$` for a dollar sign. Anything else is an error that says what.
fn expand(template: &str, names: &Names, number: u64, time: u64) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('$') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('$')
            .ok_or_else(|| format!("the template {template:?} has an unclosed $"))?;
        let identifier = &after[..close];
        rest = &after[close + 1..];
        if identifier.is_empty() {
            out.push('$');
            continue;
        }
        if identifier == "RepresentationID" {
            out.push_str(names.id);
            continue;
        }
        let (name, width) = match identifier.split_once('%') {
            Some((name, format)) => {
                let width = format
                    .strip_prefix('0')
                    .and_then(|f| f.strip_suffix('d'))
                    .and_then(|w| w.parse::<usize>().ok())
                    .filter(|w| *w <= 32)
                    .ok_or_else(|| {
                        format!("the template {template:?} has a format {format:?} other than %0Nd")
                    })?;
                (name, width)
            }
            None => (identifier, 1),
        };
        let value = match name {
            "Number" => number,
            "Bandwidth" => names.bandwidth,
            "Time" => time,
            other => {
                return Err(format!(
                    "the template {template:?} names ${other}$, which is not supported"
                ))
            }
        };
        out.push_str(&format!("{value:0width$}"));
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lastmile_protocol::ErrorKind;

    fn url() -> Url {
        Url::parse("https://video.example/vod/manifest.mpd").unwrap()
    }

    fn task(play_ms: u64, max_bitrate_kbps: Option<u64>) -> VideoTask {
        VideoTask {
            play_ms,
            max_bitrate_kbps,
        }
    }

    fn plan_of(xml: &str, task: VideoTask) -> Result<DashPlan, MeasurementError> {
        let mpd = parse(xml.as_bytes(), &url())?;
        plan(&mpd, &url(), task)
    }

    /// The plan's pieces as (path, media ms; `None` for an initialisation segment).
    fn pieces(plan: &DashPlan) -> Vec<(String, Option<u64>)> {
        plan.plan
            .pieces
            .iter()
            .map(|p| (p.url.path().to_owned(), p.media_us.map(|us| us / 1_000)))
            .collect()
    }

    fn refusal(xml: &str) -> String {
        let e = plan_of(xml, task(10_000, None)).expect_err("refused");
        assert_eq!(e.kind, ErrorKind::PlaylistInvalid, "{e:?}");
        e.message
    }

    fn mpd(attributes: &str, period: &str) -> String {
        format!(
            r#"<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" {attributes}>{period}</MPD>"#
        )
    }

    /// The testbed's live stream started at `start_ms` (Unix ms), as its MPD was
    /// `elapsed_ms` later (`timeline`: the SegmentTimeline one), viewed at that moment.
    fn testbed_live(start_ms: u64, elapsed_ms: u64, timeline: bool, cap: Option<u64>) -> LiveView {
        use std::time::SystemTime;
        let started = SystemTime::UNIX_EPOCH + Duration::from_millis(start_ms);
        let xml =
            lastmile_testbed::video::live_mpd(Duration::from_millis(elapsed_ms), started, timeline);
        let mpd = parse(xml.as_bytes(), &url()).unwrap();
        assert!(is_live(&mpd));
        let now_us = ((start_ms + elapsed_ms) * 1_000) as i64;
        live_view(&mpd, &url(), task(4_000, cap), now_us, None).unwrap()
    }

    #[test]
    fn a_live_timeline_lists_its_window_with_when_each_segment_is_published() {
        let start_ms = 1_700_000_000_000;
        let view = testbed_live(start_ms, 10_400, true, Some(2_000));
        assert!(view.dynamic);
        assert_eq!(view.bitrate_bps, Some(2_000_000));
        assert_eq!(view.init.as_ref().unwrap().url.path(), "/vod/low/init.mp4");
        assert_eq!(
            view.reload_after,
            Duration::from_secs(1),
            "minimumUpdatePeriod"
        );
        assert_eq!((view.segment_us, view.delay_us), (1_000_000, 3_000_000));
        let listed: Vec<(u64, String, i64)> = view
            .segments
            .iter()
            .map(|s| {
                (
                    s.start_us / 1_000,
                    s.url.path().to_owned(),
                    s.available_at_us / 1_000,
                )
            })
            .collect();
        let expected: Vec<(u64, String, i64)> = (4..10)
            .map(|n| {
                (
                    n * 1_000,
                    format!("/vod/low/seg{n}.m4s"),
                    (start_ms + (n + 1) * 1_000) as i64,
                )
            })
            .collect();
        assert_eq!(
            listed, expected,
            "segment n starts at n s, is published at (n+1) s"
        );
        assert!(testbed_live(start_ms, 500, true, None).segments.is_empty());
    }

    #[test]
    fn a_live_duration_template_names_every_segment_from_before_the_edge_on() {
        let start_ms = 1_700_000_000_000;
        let view = testbed_live(start_ms, 10_400, false, None);
        assert_eq!(view.bitrate_bps, Some(30_000_000));
        // Nine segments published by 10.4 s (0 to 8 whole, the ninth ends at 10 s):
        // from five before the last available one, on past the session's 4 s.
        let first = &view.segments[0];
        assert_eq!(first.start_us, 4_000_000, "{first:?}");
        assert_eq!(first.url.path(), "/vod/high/seg4.m4s");
        assert!(view.segments.len() >= 4 + 5, "{}", view.segments.len());
        for pair in view.segments.windows(2) {
            assert_eq!(pair[1].start_us, pair[0].start_us + 1_000_000);
            assert_eq!(pair[1].available_at_us, pair[0].available_at_us + 1_000_000);
        }
        assert_eq!(
            first.available_at_us,
            ((start_ms + 5_000) * 1_000) as i64,
            "segment 4 is published at 5 s"
        );
        // Before anything is published, the first segments are still named, each
        // with its publication time.
        let early = testbed_live(start_ms, 100, false, None);
        assert_eq!(early.segments[0].start_us, 0);
        assert_eq!(
            early.segments[0].available_at_us,
            ((start_ms + 1_000) * 1_000) as i64
        );
    }

    #[test]
    fn the_origins_clock_is_read_from_the_first_utc_timing_the_agent_can_read() {
        let with = |timings: &str| {
            let xml = mpd(
                r#"type="dynamic" availabilityStartTime="2026-01-01T00:00:00Z""#,
                &format!("<Period/>{timings}"),
            );
            time_source(&parse(xml.as_bytes(), &url()).unwrap(), &url())
        };
        assert_eq!(with(""), None);
        assert_eq!(
            with(
                r#"<UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-head:2014" value="https://time.example/"/>
                   <UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-iso:2014" value="/clock?iso https://b.example/"/>"#
            ),
            Some(TimeSource::Fetch(
                Url::parse("https://video.example/clock?iso").unwrap()
            )),
            "http-head is skipped; the first of several URLs, resolved"
        );
        assert_eq!(
            with(
                r#"<UTCTiming schemeIdUri="urn:mpeg:dash:utc:direct:2014" value="2026-12-06T20:30:00.250Z"/>"#
            ),
            Some(TimeSource::Direct(1_796_589_000_250_000))
        );
        assert_eq!(
            with(r#"<UTCTiming schemeIdUri="urn:mpeg:dash:utc:ntp:2014" value="pool.ntp.org"/>"#),
            None
        );
        assert_eq!(
            parse_time(b" 2026-12-06T20:30:00Z\n"),
            Some(1_796_589_000_000_000)
        );
        assert_eq!(
            parse_time(b"2026-12-06T21:30:00.5+01:00"),
            Some(1_796_589_000_500_000)
        );
        assert_eq!(
            parse_time(b"2026-12-06T20:30:00"),
            Some(1_796_589_000_000_000),
            "UTC"
        );
        assert_eq!(parse_time(b"Sun, 06 Dec 2026 20:30:00 GMT"), None);
        assert_eq!(parse_time(b"\xff"), None);
    }

    #[test]
    fn a_segment_base_is_played_from_the_subsegments_its_sidx_lists() {
        let xml = mpd(
            r#"mediaPresentationDuration="PT6S""#,
            r#"<Period><AdaptationSet contentType="video"><Representation id="v" bandwidth="1">
               <BaseURL>v.mp4</BaseURL><SegmentBase indexRange="700-767"><Initialization range="0-699"/></SegmentBase>
               </Representation></AdaptationSet></Period>"#,
        );
        let p = plan_of(&xml, task(3_500, None)).unwrap();
        assert!(
            p.plan.pieces.is_empty(),
            "nothing before the indexed period"
        );
        let indexed = p.indexed.expect("an indexed representation");
        assert_eq!(indexed.url.path(), "/vod/v.mp4");
        assert_eq!(
            indexed.index,
            ByteRange {
                offset: 700,
                length: 68
            }
        );
        // The index: a styp box, then the sidx, whose first subsegment starts 4 bytes
        // after it: 2 s subsegments at 90 kHz of 1000, 2000 and 3000 bytes.
        let mut index = vec![0, 0, 0, 8, b's', b't', b'y', b'p'];
        let sidx = sidx_box(
            1,
            90_000,
            4,
            &[
                (false, 1_000, 180_000),
                (false, 2_000, 180_000),
                (false, 3_000, 180_000),
            ],
        );
        index.extend(&sidx);
        let pieces = indexed_pieces(&indexed, &index).unwrap();
        type Got = (Option<(u64, u64)>, Option<u64>);
        let got: Vec<Got> = pieces
            .iter()
            .map(|p| (p.range.map(|r| (r.offset, r.length)), p.media_us))
            .collect();
        let first = 700 + 8 + sidx.len() as u64 + 4;
        assert_eq!(
            got,
            vec![
                (Some((0, 700)), None),
                (Some((first, 1_000)), Some(2_000_000)),
                (Some((first + 1_000, 2_000)), Some(2_000_000)),
            ],
            "3.5 s take two subsegments"
        );
        // Version 0 reads the same; a box cut short, none at all, a hierarchical
        // index and a timescale of 0 are refused.
        let v0 = sidx_box(0, 1_000, 0, &[(false, 10, 1_000)]);
        assert_eq!(Sidx::find(&v0).unwrap().references.len(), 1);
        assert_eq!(Sidx::find(&v0[..v0.len() - 1]), None);
        let refused = |bytes: &[u8]| indexed_pieces(&indexed, bytes).unwrap_err().message;
        assert!(refused(b"\0\0\0\x08styp").contains("no sidx box"));
        assert!(refused(&sidx_box(0, 1_000, 0, &[(true, 10, 1_000)])).contains("hierarchical"));
        assert!(refused(&sidx_box(0, 0, 0, &[(false, 10, 1_000)])).contains("timescale of 0"));
        assert!(refused(&sidx_box(0, 1_000, 0, &[])).contains("no media"));
    }

    #[test]
    fn an_ffmpeg_style_live_mpd_plays_its_video_by_number_with_its_delay() {
        // As ffmpeg's dash muxer writes one: namespaces, program information, a
        // SegmentTimeline per representation, $Number%05d$, a 500 s update period.
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<MPD xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns="urn:mpeg:dash:schema:mpd:2011"
	xmlns:xlink="http://www.w3.org/1999/xlink"
	xsi:schemaLocation="urn:mpeg:DASH:schema:MPD:2011 http://standards.iso.org/ittf/PubliclyAvailableStandards/MPEG-DASH_schema_files/DASH-MPD.xsd"
	profiles="urn:mpeg:dash:profile:isoff-live:2011" type="dynamic" minimumUpdatePeriod="PT500S"
	suggestedPresentationDelay="PT4S" availabilityStartTime="2026-12-06T20:00:00.000Z"
	publishTime="2026-12-06T20:01:00.000Z" timeShiftBufferDepth="PT1M0.0S" minBufferTime="PT8.0S">
	<ProgramInformation></ProgramInformation>
	<ServiceDescription id="0"></ServiceDescription>
	<Period id="0" start="PT0.0S">
		<AdaptationSet id="0" contentType="video" startWithSAP="1" segmentAlignment="true" bitstreamSwitching="true" frameRate="25/1" maxWidth="1280" maxHeight="720" par="16:9">
			<Representation id="0" mimeType="video/mp4" codecs="avc1.64001f" bandwidth="2000000" width="1280" height="720" sar="1:1">
				<SegmentTemplate timescale="12800" initialization="init-stream$RepresentationID$.m4s" media="chunk-stream$RepresentationID$-$Number%05d$.m4s" startNumber="1">
					<SegmentTimeline><S t="0" d="51200" r="14" /></SegmentTimeline>
				</SegmentTemplate>
			</Representation>
		</AdaptationSet>
		<AdaptationSet id="1" contentType="audio" startWithSAP="1" segmentAlignment="true" bitstreamSwitching="true">
			<Representation id="1" mimeType="audio/mp4" codecs="mp4a.40.2" bandwidth="128000" audioSamplingRate="48000">
				<AudioChannelConfiguration schemeIdUri="urn:mpeg:dash:23003:3:audio_channel_configuration:2011" value="2" />
				<SegmentTemplate timescale="48000" initialization="init-stream$RepresentationID$.m4s" media="chunk-stream$RepresentationID$-$Number%05d$.m4s" startNumber="1">
					<SegmentTimeline><S t="0" d="192000" r="14" /></SegmentTimeline>
				</SegmentTemplate>
			</Representation>
		</AdaptationSet>
	</Period>
	<UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-xsdate:2014" value="https://time.akamai.com/?iso" />
</MPD>"#;
        let mpd = parse(xml.as_bytes(), &url()).unwrap();
        assert!(is_live(&mpd));
        assert_eq!(
            time_source(&mpd, &url()),
            Some(TimeSource::Fetch(
                Url::parse("https://time.akamai.com/?iso").unwrap()
            ))
        );
        // A minute in: fifteen 4 s segments listed (0 to 60 s).
        let now = 1_796_587_260_000_000; // 2026-12-06T20:01:00Z
        let view = live_view(&mpd, &url(), task(10_000, None), now, None).unwrap();
        assert_eq!(
            view.bitrate_bps,
            Some(2_000_000),
            "the video, not the audio"
        );
        assert_eq!(
            view.init.as_ref().unwrap().url.path(),
            "/vod/init-stream0.m4s"
        );
        assert_eq!(view.segments.len(), 15);
        assert_eq!(view.segments[0].url.path(), "/vod/chunk-stream0-00001.m4s");
        assert_eq!(view.segments[14].url.path(), "/vod/chunk-stream0-00015.m4s");
        assert_eq!(view.segments[14].start_us, 56_000_000);
        assert_eq!(view.segments[14].available_at_us, now);
        assert_eq!((view.segment_us, view.delay_us), (4_000_000, 4_000_000));
        assert_eq!(
            view.reload_after,
            Duration::from_secs(4),
            "a segment, not 500 s"
        );
    }

    #[test]
    fn templates_expand_identifiers_widths_and_dollars() {
        let names = Names {
            id: "v1",
            bandwidth: 2_000_000,
        };
        let e = |t: &str| expand(t, &names, 7, 180_000);
        assert_eq!(
            e("$RepresentationID$/seg$Number$.m4s").unwrap(),
            "v1/seg7.m4s"
        );
        assert_eq!(e("seg-$Number%05d$.m4s").unwrap(), "seg-00007.m4s");
        assert_eq!(e("$Bandwidth$/$Time$.mp4").unwrap(), "2000000/180000.mp4");
        assert_eq!(e("$Time%08d$").unwrap(), "00180000");
        assert_eq!(e("a$$b").unwrap(), "a$b");
        assert_eq!(e("plain.mp4").unwrap(), "plain.mp4");
        assert!(e("$SubNumber$").unwrap_err().contains("$SubNumber$"));
        assert!(e("seg$Number").unwrap_err().contains("unclosed"));
        assert!(e("$Number%5d$").unwrap_err().contains("%0Nd"));
        assert!(e("$Number%099d$").is_err(), "no absurd widths");
    }

    #[test]
    fn the_demo_presentation_plays_a_rendition_by_the_cap_from_its_initialisation() {
        let xml = lastmile_testbed::video::mpd();
        let low = plan_of(&xml, task(12_000, Some(2_000))).unwrap();
        assert_eq!(low.bitrate_bps, Some(2_000_000));
        let mut expected = vec![("/vod/low/init.mp4".to_owned(), None)];
        expected.extend((0..12).map(|n| (format!("/vod/low/seg{n}.m4s"), Some(1_000))));
        assert_eq!(pieces(&low), expected);
        assert_eq!(low.plan.media_us, 12_000_000);

        // No cap: the highest; a part of a segment: the whole segment is fetched.
        let high = plan_of(&xml, task(3_500, None)).unwrap();
        assert_eq!(high.bitrate_bps, Some(30_000_000));
        assert_eq!(pieces(&high).len(), 1 + 4);
        assert_eq!(pieces(&high)[4].0, "/vod/high/seg3.m4s");
        assert_eq!(high.plan.media_us, 3_500_000);
        // A cap under every representation: the lowest. Audio is never played beside
        // video.
        let under = plan_of(&xml, task(1_000, Some(1))).unwrap();
        assert_eq!(under.bitrate_bps, Some(2_000_000));
        assert!(pieces(&under).iter().all(|(p, _)| !p.contains("audio")));
    }

    #[test]
    fn numbered_segments_end_with_the_period_and_base_urls_chain() {
        let xml = mpd(
            r#"type="static" mediaPresentationDuration="PT2.5S""#,
            r#"<BaseURL>https://cdn.example/root/</BaseURL>
               <Period><BaseURL>p1/</BaseURL>
                 <AdaptationSet mimeType="video/mp4"><BaseURL>video/</BaseURL>
                   <SegmentTemplate media="$RepresentationID$-$Number$.mp4" duration="2" timescale="2"/>
                   <Representation id="r" bandwidth="1000"><BaseURL>r/</BaseURL></Representation>
                 </AdaptationSet></Period>"#,
        );
        let p = plan_of(&xml, task(10_000, None)).unwrap();
        let urls: Vec<String> = p.plan.pieces.iter().map(|p| p.url.to_string()).collect();
        assert_eq!(
            urls,
            [1, 2, 3].map(|n| format!("https://cdn.example/root/p1/video/r/r-{n}.mp4")),
            "startNumber defaults to 1; no initialisation named"
        );
        let media: Vec<Option<u64>> = p.plan.pieces.iter().map(|p| p.media_us).collect();
        assert_eq!(media, [Some(1_000_000), Some(1_000_000), Some(500_000)]);
        assert_eq!(
            p.plan.media_us, 2_500_000,
            "the presentation is shorter than play_ms"
        );
    }

    #[test]
    fn a_timeline_gives_times_repeats_and_open_repeats_to_the_period_end() {
        let xml = mpd(
            r#"mediaPresentationDuration="PT6S""#,
            r#"<Period>
                 <AdaptationSet contentType="video">
                   <SegmentTemplate timescale="90000" media="t$Time$.m4s" initialization="i.mp4">
                     <SegmentTimeline><S t="0" d="90000" r="1"/><S d="45000"/><S d="90000" r="-1"/></SegmentTimeline>
                   </SegmentTemplate>
                   <Representation id="v" bandwidth="5000"/>
                 </AdaptationSet></Period>"#,
        );
        let p = plan_of(&xml, task(60_000, None)).unwrap();
        assert_eq!(
            pieces(&p),
            vec![
                ("/vod/i.mp4".to_owned(), None),
                ("/vod/t0.m4s".to_owned(), Some(1_000)),
                ("/vod/t90000.m4s".to_owned(), Some(1_000)),
                ("/vod/t180000.m4s".to_owned(), Some(500)),
                ("/vod/t225000.m4s".to_owned(), Some(1_000)),
                ("/vod/t315000.m4s".to_owned(), Some(1_000)),
                ("/vod/t405000.m4s".to_owned(), Some(1_000)),
                ("/vod/t495000.m4s".to_owned(), Some(1_000)),
            ],
            "r=\"-1\" repeats until the period's end at 6 s (540,000 ticks)"
        );
        // Without an end anywhere, an open repeat stops at play_ms.
        let open = xml.replace(r#" mediaPresentationDuration="PT6S""#, "");
        let p = plan_of(&open, task(4_000, None)).unwrap();
        assert_eq!(p.plan.pieces.len(), 1 + 5);
        assert_eq!(p.plan.media_us, 4_000_000);
    }

    #[test]
    fn periods_play_in_order_each_with_its_initialisation() {
        let period = |id: &str| {
            format!(
                r#"<Period id="{id}" duration="PT3S"><AdaptationSet contentType="video">
                     <SegmentTemplate media="{id}/$Number$.m4s" initialization="{id}/init.mp4" duration="1" startNumber="0"/>
                     <Representation id="v" bandwidth="1"/></AdaptationSet></Period>"#
            )
        };
        let xml = mpd("", &format!("{}{}", period("ad"), period("show")));
        let p = plan_of(&xml, task(5_000, None)).unwrap();
        let paths: Vec<String> = pieces(&p).into_iter().map(|(path, _)| path).collect();
        assert_eq!(
            paths,
            [
                "ad/init.mp4",
                "ad/0.m4s",
                "ad/1.m4s",
                "ad/2.m4s",
                "show/init.mp4",
                "show/0.m4s",
                "show/1.m4s"
            ]
            .map(|p| format!("/vod/{p}"))
        );
    }

    #[test]
    fn a_segment_list_and_audio_alone_and_trick_mode_sets() {
        // Audio only (a radio stream) plays its audio; the trick-mode set is skipped
        // even though its bandwidth is what the cap would pick.
        let xml = mpd(
            "",
            r#"<Period duration="PT4S">
                 <AdaptationSet contentType="video">
                   <EssentialProperty schemeIdUri="http://dashif.org/guidelines/trickmode" value="1"/>
                   <SegmentTemplate media="trick$Number$.jpg" duration="1"/>
                   <Representation id="trick" bandwidth="64000"/>
                 </AdaptationSet>
                 <AdaptationSet contentType="text"><Representation id="subs" bandwidth="1000"/></AdaptationSet>
                 <AdaptationSet mimeType="audio/mp4">
                   <Representation id="aac" bandwidth="128000">
                     <SegmentList timescale="1000" duration="2000">
                       <Initialization sourceURL="aac/init.mp4"/>
                       <SegmentURL media="aac/a.m4s"/><SegmentURL media="aac/b.m4s"/><SegmentURL media="aac/c.m4s"/>
                     </SegmentList>
                   </Representation>
                 </AdaptationSet></Period>"#,
        );
        let p = plan_of(&xml, task(3_000, None)).unwrap();
        assert_eq!(p.bitrate_bps, Some(128_000));
        assert_eq!(
            pieces(&p),
            vec![
                ("/vod/aac/init.mp4".to_owned(), None),
                ("/vod/aac/a.m4s".to_owned(), Some(2_000)),
                ("/vod/aac/b.m4s".to_owned(), Some(2_000)),
            ]
        );
        assert_eq!(p.plan.media_us, 3_000_000);
    }

    #[test]
    fn presentations_a_player_cannot_play_are_refused_with_what_they_are() {
        let video = |inner: &str| {
            mpd(
                r#"mediaPresentationDuration="PT4S""#,
                &format!(
                    r#"<Period><AdaptationSet contentType="video">{inner}
                       <Representation id="v" bandwidth="1"/></AdaptationSet></Period>"#
                ),
            )
        };
        let live = mpd(
            r#"type="dynamic" availabilityStartTime="2026-01-01T00:00:00Z""#,
            r#"<Period><AdaptationSet contentType="video"><SegmentTemplate media="$Number$" duration="1"/><Representation id="v"/></AdaptationSet></Period>"#,
        );
        assert!(is_live(&parse(live.as_bytes(), &url()).unwrap()));
        let no_start = parse(
            live.replace(r#"availabilityStartTime="2026-01-01T00:00:00Z""#, "")
                .as_bytes(),
            &url(),
        )
        .unwrap();
        let e = live_view(&no_start, &url(), task(5_000, None), 0, None).unwrap_err();
        assert!(
            e.message.contains("without an availabilityStartTime"),
            "{e:?}"
        );
        assert!(refusal(&mpd("", "")).contains("no Period"));
        assert!(refusal(&video(r#"<SegmentBase indexRange="x"/>"#)).contains("not first-last"));
        assert!(
            refusal(&video("")).contains("nor an index"),
            "a bare BaseURL file"
        );
        assert!(refusal(&video(
            r#"<SegmentTemplate media="$Number$" timescale="0" duration="1"/>"#
        ))
        .contains("timescale of 0"));
        assert!(refusal(&video(r#"<SegmentTemplate media="$Number$"/>"#))
            .contains("neither @duration nor a SegmentTimeline"));
        assert!(
            refusal(&video(r#"<SegmentTemplate media="$Sub$" duration="1"/>"#)).contains("$Sub$")
        );
        assert!(refusal(&video(
            r#"<SegmentList duration="1"><SegmentURL media="a" mediaRange="9-0"/></SegmentList>"#
        ))
        .contains("not first-last"));
        assert!(refusal(&video(
            r#"<SegmentList duration="1"><Initialization sourceURL="i" range="all"/><SegmentURL media="a"/></SegmentList>"#
        ))
        .contains("not first-last"));
        let text_only = mpd(
            "",
            r#"<Period id="p"><AdaptationSet contentType="text"><Representation id="s"/></AdaptationSet></Period>"#,
        );
        assert!(refusal(&text_only).contains("period \"p\" has no video or audio"));
        let broken = parse(b"<MPD><Period duration=\"soon\"></Period></MPD>", &url()).unwrap_err();
        assert_eq!(broken.kind, ErrorKind::PlaylistInvalid);
        assert!(broken.message.contains("not a DASH MPD"), "{broken:?}");
        assert!(!is_mpd(b"<html><body>hi</body></html>"));
        assert!(!is_mpd(b"#EXTM3U\n# <MPD in a comment\n"));
        assert!(is_mpd(b"\xEF\xBB\xBF\n  <?xml version=\"1.0\"?><MPD/>"));
    }

    /// A live MPD started at 2026-01-01T00:00:00Z whose video set holds `inner`, viewed
    /// `at_s` seconds in.
    fn live_at(inner: &str, at_s: i64) -> Result<LiveView, MeasurementError> {
        let xml = mpd(
            r#"type="dynamic" availabilityStartTime="2026-01-01T00:00:00Z""#,
            &format!(
                r#"<Period start="PT0S"><AdaptationSet contentType="video">{inner}
                   <Representation id="v" bandwidth="1000"/></AdaptationSet></Period>"#
            ),
        );
        let mpd = parse(xml.as_bytes(), &url())?;
        let start = 1_767_225_600_000_000i64; // 2026-01-01T00:00:00Z
        live_view(
            &mpd,
            &url(),
            task(10_000, None),
            start + at_s * 1_000_000,
            None,
        )
    }

    #[test]
    fn a_live_timeline_entry_without_r_is_one_segment() {
        // The compact form packagers write for audio: durations that alternate, one
        // <S> each, with `t` on the first only.
        let view = live_at(
            r#"<SegmentTemplate timescale="1000" media="$Time$.m4s"><SegmentTimeline>
                 <S t="0" d="2000"/><S d="1900"/><S d="2100" r="2"/>
               </SegmentTimeline></SegmentTemplate>"#,
            60,
        )
        .unwrap();
        let starts: Vec<u64> = view.segments.iter().map(|s| s.start_us / 1_000).collect();
        assert_eq!(starts, [0, 2_000, 3_900, 6_000, 8_100]);
        assert_eq!(view.segments[1].url.path(), "/vod/2000.m4s");
    }

    #[test]
    fn a_long_live_timeline_keeps_its_last_segments_without_making_the_rest() {
        // 50,000 runs of 2,000 one-tick segments: 100 million segments, of which the
        // view keeps the last LIVE_LOOKAHEAD (numbered on from startNumber).
        let runs = r#"<S d="1" r="1999"/>"#.repeat(50_000);
        let view = live_at(
            &format!(
                r#"<SegmentTemplate timescale="1000000" startNumber="1" media="$Number$.m4s">
                   <SegmentTimeline>{runs}</SegmentTimeline></SegmentTemplate>"#
            ),
            1_000,
        )
        .unwrap();
        assert_eq!(view.segments.len(), LIVE_LOOKAHEAD);
        let last = view.segments.last().unwrap();
        assert_eq!(last.url.path(), "/vod/100000000.m4s");
        assert_eq!(last.start_us, 100_000_000 - 1);
        // More entries than any real timeline has are refused.
        let e = live_at(
            &format!(
                r#"<SegmentTemplate media="$Number$.m4s"><SegmentTimeline>{}
                   </SegmentTimeline></SegmentTemplate>"#,
                r#"<S d="1"/>"#.repeat(MAX_TIMELINE_ENTRIES + 1)
            ),
            10,
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::PlaylistInvalid);
        assert!(e.message.contains("at most 100000"), "{e:?}");
    }

    #[test]
    fn a_live_initialisation_range_is_kept() {
        let view = live_at(
            r#"<BaseURL>live.mp4</BaseURL><SegmentTemplate media="$Number$.m4s" duration="1">
                 <Initialization range="0-861"/></SegmentTemplate>"#,
            60,
        )
        .unwrap();
        let init = view.init.unwrap();
        assert_eq!(init.url.path(), "/vod/live.mp4");
        assert_eq!(
            init.range,
            Some(ByteRange {
                offset: 0,
                length: 862
            })
        );
    }

    #[test]
    fn urls_longer_than_a_cdn_takes_are_refused_before_any_is_made_twice() {
        let long = "a".repeat(crate::video::MAX_URL_BYTES);
        for inner in [
            format!(r#"<SegmentTemplate media="{long}/$Number$.m4s" duration="1"/>"#),
            format!(
                r#"<BaseURL>{long}/</BaseURL><SegmentTemplate media="$Number$.m4s" duration="1"/>"#
            ),
        ] {
            let e = live_at(&inner, 60).unwrap_err();
            assert_eq!(e.kind, ErrorKind::PlaylistInvalid);
            assert!(e.message.contains("at most 8192"), "{e:?}");
            let vod = mpd(
                r#"mediaPresentationDuration="PT10S""#,
                &format!(
                    r#"<Period><AdaptationSet contentType="video">{inner}
                       <Representation id="v" bandwidth="1"/></AdaptationSet></Period>"#
                ),
            );
            assert!(refusal(&vod).contains("at most 8192"));
        }
        // A scheme no player fetches is the MPD's fault, not the task's.
        let e = live_at(
            r#"<BaseURL>ftp://video.example/</BaseURL><SegmentTemplate media="$Number$.m4s" duration="1"/>"#,
            60,
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::PlaylistInvalid, "{e:?}");
        assert!(e.message.contains("only http and https"), "{e:?}");
    }

    #[test]
    fn hostile_boxes_and_ranges_are_refused_not_trusted() {
        // A `free` box claiming 2^64 - 4 bytes: no index, and no panic reading past it.
        let mut hostile = vec![0, 0, 0, 1];
        hostile.extend_from_slice(b"free");
        hostile.extend_from_slice(&u64::MAX.wrapping_sub(3).to_be_bytes());
        assert_eq!(Sidx::find(&hostile), None);
        // A box whose 32-bit size runs past the bytes read.
        let mut short = vec![0xFF, 0xFF, 0xFF, 0xFC];
        short.extend_from_slice(b"free");
        short.extend_from_slice(&[0; 8]);
        assert_eq!(Sidx::find(&short), None);
        // A range of 2^64 bytes (its length has no number), and one backwards.
        for range in ["0-18446744073709551615", "5-3"] {
            let e = byte_range(range, "x").unwrap_err();
            assert!(e.message.contains("not first-last"), "{e:?}");
        }
        assert_eq!(
            byte_range("0-18446744073709551614", "x").unwrap().length,
            u64::MAX
        );
    }

    #[test]
    fn a_live_session_behind_the_edge_finishes_a_period_before_the_next() {
        // A programme (0-20 s, 2 s segments) then an ad break from 20 s (1 s segments
        // of its own, numbered from 1), 21 s in: the edge is in the ad, but a session
        // three segments behind has the programme's last segments to play first.
        let xml = mpd(
            r#"type="dynamic" availabilityStartTime="2026-01-01T00:00:00Z""#,
            r#"<Period id="show" start="PT0S"><AdaptationSet contentType="video">
                 <SegmentTemplate timescale="1000" media="show/$Number$.m4s" startNumber="0">
                 <SegmentTimeline><S t="0" d="2000" r="9"/></SegmentTimeline></SegmentTemplate>
                 <Representation id="v" bandwidth="1000"/></AdaptationSet></Period>
               <Period id="ad" start="PT20S"><AdaptationSet contentType="video">
                 <SegmentTemplate timescale="1000" media="ad/$Number$.m4s" startNumber="1">
                 <SegmentTimeline><S t="0" d="1000"/></SegmentTimeline></SegmentTemplate>
                 <Representation id="v" bandwidth="1000"/></AdaptationSet></Period>"#,
        );
        let mpd = parse(xml.as_bytes(), &url()).unwrap();
        let now = 1_767_225_600_000_000i64 + 21_000_000;
        let at = |played_to_us| live_view(&mpd, &url(), task(10_000, None), now, played_to_us);
        // Before playing: the period under way, the ad's one published segment.
        let fresh = at(None).unwrap();
        assert_eq!(fresh.segments.len(), 1);
        assert_eq!(fresh.segments[0].url.path(), "/vod/ad/1.m4s");
        assert_eq!(
            fresh.segments[0].start_us, 20_000_000,
            "on the presentation's timeline"
        );
        assert_eq!(fresh.segments[0].available_at_us, now);
        // Played to 16 s: still the programme, whose last segments follow.
        let show = at(Some(16_000_000)).unwrap();
        let last = show.segments.last().unwrap();
        assert_eq!(last.url.path(), "/vod/show/9.m4s");
        assert_eq!((last.start_us, last.media_us), (18_000_000, 2_000_000));
        // Played to the programme's end (within rounding): the ad, right after it.
        let ad = at(Some(20_000_000 - 3)).unwrap();
        assert_eq!(ad.segments[0].url.path(), "/vod/ad/1.m4s");
    }
}
