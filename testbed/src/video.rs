//! The demo site's streams, for `video` checks: an HLS video on demand and a live
//! stream, each in two renditions, and the same video on demand as MPEG-DASH.
//!
//! [`MASTER_PATH`] is a master playlist naming a low and a high rendition by their
//! `BANDWIDTH`; each rendition's media playlist lists [`SEGMENTS`] segments of
//! [`SEGMENT_MS`] each (`#EXT-X-ENDLIST`: video on demand), whose bodies are
//! `bitrate × duration` bytes of noise, so a segment takes exactly its share of a line:
//! the high rendition (30 Mbit/s) outruns a 16 Mbit/s DSL line and stalls its player,
//! and plays on a 100 Mbit/s cable line. Playlists are made per request and each
//! rendition's segment body once per process (shared by every site), so a test site
//! that no one plays costs nothing.
//!
//! **The live stream** ([`LIVE_MASTER_PATH`], the same renditions under
//! `/video/live/`) is made from the wall clock: since the site started (each
//! [`crate::site::TargetSite`] keeps its own start instant, so a test's fresh site is a
//! fresh stream, whatever ran before in the process), segment n ([`SEGMENT_MS`] each,
//! the VOD's body) is published at start + (n+1) s, as an encoder publishes a segment
//! once it has recorded it. A media playlist lists the last [`LIVE_WINDOW`] published
//! segments (none in the first second) with `#EXT-X-MEDIA-SEQUENCE` the first one's
//! number, `#EXT-X-TARGETDURATION:1` and no `#EXT-X-ENDLIST`, so a player reloads it.
//! A published segment stays available after it leaves the window (as CDNs keep them a
//! while); one not published yet is a 404. The playlists take the time since the start
//! as an argument ([`live_media`], [`answer`]), so they are tested at chosen instants.
//!
//! **The DASH presentation** ([`DASH_PATH`], [`mpd`]) is the VOD's two renditions as
//! one video adaptation set whose `SegmentTemplate` names `$RepresentationID$/init.mp4`
//! ([`INIT_BYTES`] of noise) and `$RepresentationID$/seg$Number$.m4s` (the segments'
//! bodies), and an audio adaptation set whose segments the site does not serve: a
//! player measuring the video must not fetch them (a 404 would fail the session).
//!
//! **The live DASH presentations** are the live stream's segments (published at the same
//! moments, under `/video/live/<rendition>/seg<n>.m4s`, with an `init.mp4`) in a
//! dynamic MPD whose `availabilityStartTime` is the site's start on the wall clock
//! (rounded up to the millisecond, so no segment is announced before it is
//! published): [`LIVE_DASH_PATH`] lists the last [`LIVE_WINDOW`] published segments in
//! a `SegmentTimeline` (a player reloads it, every `minimumUpdatePeriod` of a second),
//! [`LIVE_DASH_NUMBERED_PATH`] names them by `@duration` (a player computes when each
//! is published and never reloads). Both name [`TIME_PATH`], which answers the site's
//! wall clock (`UTCTiming`, `http-iso`), as a live origin tells players its time.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// The master playlist.
pub const MASTER_PATH: &str = "/video/master.m3u8";

/// The live stream's master playlist.
pub const LIVE_MASTER_PATH: &str = "/video/live/master.m3u8";

/// The DASH presentation (MPD) of the video on demand.
pub const DASH_PATH: &str = "/video/manifest.mpd";

/// The live stream as a dynamic MPD with a `SegmentTimeline`.
pub const LIVE_DASH_PATH: &str = "/video/live/manifest.mpd";

/// The live stream as a dynamic MPD whose `SegmentTemplate` has a `@duration`.
pub const LIVE_DASH_NUMBERED_PATH: &str = "/video/live/numbered.mpd";

/// The site's wall clock, an ISO 8601 time (a live MPD's `UTCTiming`).
pub const TIME_PATH: &str = "/video/time";

/// Bytes of a DASH representation's initialisation segment.
pub const INIT_BYTES: usize = 1_200;

/// Segments a live media playlist lists: the last ones published.
pub const LIVE_WINDOW: u64 = 6;

/// Segments per rendition.
pub const SEGMENTS: usize = 12;

/// Each segment's duration, milliseconds (`#EXTINF:1.000`).
pub const SEGMENT_MS: u64 = 1_000;

/// A rendition: its name (its directory under `/video/`) and bitrate, bit/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rendition {
    pub name: &'static str,
    pub bitrate_bps: u64,
}

/// The renditions, lowest first.
pub const RENDITIONS: [Rendition; 2] = [
    Rendition {
        name: "low",
        bitrate_bps: 2_000_000,
    },
    Rendition {
        name: "high",
        bitrate_bps: 30_000_000,
    },
];

/// Bytes of one segment of `rendition`.
pub fn segment_bytes(rendition: Rendition) -> usize {
    (rendition.bitrate_bps / 8 * SEGMENT_MS / 1_000) as usize
}

/// The master playlist's text (the VOD's and the live stream's: URIs relative to it).
pub fn master() -> String {
    let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:3\n");
    for r in RENDITIONS {
        out.push_str(&format!(
            "#EXT-X-STREAM-INF:BANDWIDTH={},CODECS=\"avc1.640028\"\n{}/index.m3u8\n",
            r.bitrate_bps, r.name
        ));
    }
    out
}

/// A rendition's media playlist (segment URIs relative to it: every rendition's is the
/// same text in its own directory).
pub fn media() -> String {
    let seconds = SEGMENT_MS as f64 / 1_000.0;
    let mut out = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{}\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n",
        seconds.ceil() as u64
    );
    for i in 0..SEGMENTS {
        out.push_str(&format!("#EXTINF:{seconds:.3},\nseg{i}.ts\n"));
    }
    out.push_str("#EXT-X-ENDLIST\n");
    out
}

/// The DASH presentation's MPD: the VOD's renditions (segment URLs relative to it, under
/// `/video/<rendition>/`) and an audio set the site does not serve.
pub fn mpd() -> String {
    let mut reps = String::new();
    for r in RENDITIONS {
        reps.push_str(&format!(
            "      <Representation id=\"{}\" bandwidth=\"{}\" codecs=\"avc1.640028\"/>\n",
            r.name, r.bitrate_bps
        ));
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" profiles="urn:mpeg:dash:profile:isoff-live:2011"
     mediaPresentationDuration="PT{seconds}S" minBufferTime="PT2S">
  <Period id="1" start="PT0S">
    <AdaptationSet contentType="video" mimeType="video/mp4" segmentAlignment="true">
      <SegmentTemplate timescale="1000" duration="{SEGMENT_MS}" startNumber="0"
                       initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/seg$Number$.m4s"/>
{reps}    </AdaptationSet>
    <AdaptationSet contentType="audio" mimeType="audio/mp4" lang="en">
      <SegmentTemplate timescale="48000" duration="48000" startNumber="0"
                       initialization="audio/init.mp4" media="audio/seg$Number$.m4s"/>
      <Representation id="audio" bandwidth="128000" codecs="mp4a.40.2"/>
    </AdaptationSet>
  </Period>
</MPD>
"#,
        seconds = SEGMENTS as u64 * SEGMENT_MS / 1_000,
    )
}

/// The live stream's MPD `elapsed` after the site started at `started_at` (the wall
/// clock's `availabilityStartTime`): a `SegmentTimeline` of the last [`LIVE_WINDOW`]
/// published segments, or (`timeline` false) a `@duration` template.
pub fn live_mpd(elapsed: Duration, started_at: SystemTime, timeline: bool) -> String {
    let published = live_published(elapsed);
    let first = published.saturating_sub(LIVE_WINDOW);
    let start: chrono::DateTime<chrono::Utc> = started_at.into();
    let segments = if timeline {
        let repeat = if published > first {
            format!(
                r#"<S t="{}" d="{SEGMENT_MS}" r="{}"/>"#,
                first * SEGMENT_MS,
                published - first - 1
            )
        } else {
            String::new()
        };
        format!(
            r#"<SegmentTemplate timescale="1000" startNumber="{first}" initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/seg$Number$.m4s"><SegmentTimeline>{repeat}</SegmentTimeline></SegmentTemplate>"#
        )
    } else {
        format!(
            r#"<SegmentTemplate timescale="1000" duration="{SEGMENT_MS}" startNumber="0" initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/seg$Number$.m4s"/>"#
        )
    };
    let mut reps = String::new();
    for r in RENDITIONS {
        reps.push_str(&format!(
            r#"<Representation id="{}" bandwidth="{}" codecs="avc1.640028"/>"#,
            r.name, r.bitrate_bps
        ));
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic" profiles="urn:mpeg:dash:profile:isoff-live:2011"
     availabilityStartTime="{}" minimumUpdatePeriod="PT1S" timeShiftBufferDepth="PT{LIVE_WINDOW}S" minBufferTime="PT2S">
  <Period id="live" start="PT0S">
    <AdaptationSet contentType="video" mimeType="video/mp4">{segments}{reps}</AdaptationSet>
  </Period>
  <UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-iso:2014" value="{TIME_PATH}"/>
</MPD>
"#,
        start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )
}

/// Now on the wall clock, as a live stream that starts now announces its start in its
/// MPD: rounded up to the next millisecond, so that (taken just after the stream's
/// `Instant`) the MPD never announces a segment before the site publishes it.
pub fn live_start_on_wall_clock() -> SystemTime {
    let now = SystemTime::now();
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let ms = since.as_millis() as u64 + 1;
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// Live segments published `elapsed` after the start: segment n is at (n+1) segment
/// durations, so this many (numbered from 0).
pub fn live_published(elapsed: Duration) -> u64 {
    (elapsed.as_millis() / u128::from(SEGMENT_MS)) as u64
}

/// A rendition's live media playlist `elapsed` after the start: the last
/// [`LIVE_WINDOW`] published segments, no `#EXT-X-ENDLIST`.
pub fn live_media(elapsed: Duration) -> String {
    let seconds = SEGMENT_MS as f64 / 1_000.0;
    let published = live_published(elapsed);
    let first = published.saturating_sub(LIVE_WINDOW);
    let mut out = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{}\n#EXT-X-MEDIA-SEQUENCE:{first}\n",
        seconds.ceil() as u64
    );
    for n in first..published {
        out.push_str(&format!("#EXTINF:{seconds:.3},\nseg{n}.ts\n"));
    }
    out
}

/// What the site answers for `path` under `/video/`, `elapsed` after the site started
/// at `started_at` on the wall clock (for the live stream): `(content type, body)`, or
/// `None` for a path of no playlist or segment (or a live segment not published yet).
pub fn answer(
    path: &str,
    elapsed: Duration,
    started_at: SystemTime,
) -> Option<(&'static str, Vec<u8>)> {
    const PLAYLIST: &str = "application/vnd.apple.mpegurl";
    if path == MASTER_PATH || path == LIVE_MASTER_PATH {
        return Some((PLAYLIST, master().into_bytes()));
    }
    if path == DASH_PATH {
        return Some(("application/dash+xml", mpd().into_bytes()));
    }
    if path == TIME_PATH {
        let now: chrono::DateTime<chrono::Utc> = SystemTime::now().into();
        let text = now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        return Some(("text/plain", text.into_bytes()));
    }
    if path == LIVE_DASH_PATH || path == LIVE_DASH_NUMBERED_PATH {
        let timeline = path == LIVE_DASH_PATH;
        let text = live_mpd(elapsed, started_at, timeline);
        return Some(("application/dash+xml", text.into_bytes()));
    }
    let rest = path.strip_prefix("/video/")?;
    let (live, rest) = match rest.strip_prefix("live/") {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    let (name, file) = rest.split_once('/')?;
    let index = RENDITIONS.iter().position(|r| r.name == name)?;
    if file == "index.m3u8" {
        let text = if live { live_media(elapsed) } else { media() };
        return Some((PLAYLIST, text.into_bytes()));
    }
    if file == "init.mp4" {
        return Some(("video/mp4", init(index).to_vec()));
    }
    let (n, kind) = match file.strip_suffix(".m4s") {
        Some(number) => (number, "video/iso.segment"),
        None => (file.strip_suffix(".ts")?, "video/mp2t"),
    };
    let n: u64 = n.strip_prefix("seg")?.parse().ok()?;
    let available = if live {
        live_published(elapsed)
    } else {
        SEGMENTS as u64
    };
    if n >= available {
        return None;
    }
    Some((kind, segment(index).to_vec()))
}

/// The initialisation segment of DASH rendition `index`, made once.
fn init(index: usize) -> &'static [u8] {
    static BODIES: [OnceLock<Vec<u8>>; RENDITIONS.len()] = [OnceLock::new(), OnceLock::new()];
    BODIES[index].get_or_init(|| crate::shop::noise(300 + index as u64, INIT_BYTES))
}

/// The body of every segment of rendition `index`, made once.
fn segment(index: usize) -> &'static [u8] {
    static BODIES: [OnceLock<Vec<u8>>; RENDITIONS.len()] = [OnceLock::new(), OnceLock::new()];
    BODIES[index]
        .get_or_init(|| crate::shop::noise(200 + index as u64, segment_bytes(RENDITIONS[index])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_two_renditions_of_twelve_one_second_segments() {
        let master = master();
        assert!(master.contains("BANDWIDTH=30000000"), "{master}");
        assert!(master.contains("low/index.m3u8"), "{master}");
        let (kind, body) = answer(
            "/video/high/index.m3u8",
            Duration::ZERO,
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(kind, "application/vnd.apple.mpegurl");
        let text = String::from_utf8(body).unwrap();
        assert_eq!(text.matches("#EXTINF:1.000,").count(), SEGMENTS);
        assert!(text.ends_with("#EXT-X-ENDLIST\n"), "{text}");
        // 30 Mbit/s for one second.
        let vod = |path| answer(path, Duration::ZERO, SystemTime::UNIX_EPOCH);
        assert_eq!(vod("/video/high/seg11.ts").unwrap().1.len(), 3_750_000);
        assert_eq!(vod("/video/low/seg0.ts").unwrap().1.len(), 250_000);
        assert!(vod("/video/high/seg12.ts").is_none());
        assert!(vod("/video/mid/index.m3u8").is_none());
        assert!(vod("/video/high/seg1.mp4").is_none());
    }

    #[test]
    fn the_dash_presentation_is_the_same_segments_with_an_initialisation_each() {
        let (kind, body) = answer(DASH_PATH, Duration::ZERO, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(kind, "application/dash+xml");
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.contains("mediaPresentationDuration=\"PT12S\""),
            "{text}"
        );
        assert!(
            text.contains("<Representation id=\"high\" bandwidth=\"30000000\""),
            "{text}"
        );
        assert!(
            text.contains("media=\"$RepresentationID$/seg$Number$.m4s\""),
            "{text}"
        );
        let vod = |path| answer(path, Duration::ZERO, SystemTime::UNIX_EPOCH);
        assert_eq!(vod("/video/low/init.mp4").unwrap().1.len(), INIT_BYTES);
        assert_eq!(vod("/video/low/seg11.m4s").unwrap().1.len(), 250_000);
        assert_eq!(vod("/video/high/seg0.m4s").unwrap().0, "video/iso.segment");
        assert!(vod("/video/low/seg12.m4s").is_none());
        assert!(
            vod("/video/audio/seg0.m4s").is_none(),
            "audio is not served"
        );
        assert!(vod("/video/audio/init.mp4").is_none());
        assert!(
            vod("/video/live/low/seg0.m4s").is_none(),
            "not published yet"
        );
    }

    #[test]
    fn the_live_mpd_lists_the_published_window_from_the_wall_clock_start() {
        let started = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let at = |path, ms| {
            let (kind, body) = answer(path, Duration::from_millis(ms), started).unwrap();
            assert_eq!(kind, "application/dash+xml");
            String::from_utf8(body).unwrap()
        };
        let text = at(LIVE_DASH_PATH, 10_400);
        assert!(text.contains(r#"type="dynamic""#), "{text}");
        assert!(
            text.contains(r#"availabilityStartTime="2023-11-14T22:13:20.123Z""#),
            "{text}"
        );
        // Ten published, the last six listed: 4 to 9.
        assert!(text.contains(r#"startNumber="4""#), "{text}");
        assert!(text.contains(r#"<S t="4000" d="1000" r="5"/>"#), "{text}");
        assert!(
            !at(LIVE_DASH_PATH, 500).contains("<S "),
            "none published yet"
        );
        let numbered = at(LIVE_DASH_NUMBERED_PATH, 10_400);
        assert!(
            numbered.contains(r#"duration="1000" startNumber="0""#),
            "{numbered}"
        );
        assert!(!numbered.contains("SegmentTimeline"), "{numbered}");
        assert!(numbered.contains(r#"value="/video/time""#), "{numbered}");
        let time =
            String::from_utf8(answer(TIME_PATH, Duration::ZERO, started).unwrap().1).unwrap();
        let now = chrono::DateTime::parse_from_rfc3339(&time).unwrap();
        let skew = chrono::Utc::now()
            .signed_duration_since(now)
            .num_milliseconds()
            .abs();
        assert!(skew < 60_000, "the site's clock: {time}");
        // Its segments and initialisation, as the HLS live stream's, once published.
        let get = |path, ms| answer(path, Duration::from_millis(ms), started);
        assert!(get("/video/live/low/seg9.m4s", 9_999).is_none());
        assert_eq!(
            get("/video/live/low/seg9.m4s", 10_000).unwrap().1.len(),
            250_000
        );
        assert_eq!(
            get("/video/live/high/init.mp4", 0).unwrap().1.len(),
            INIT_BYTES
        );
        assert!(live_start_on_wall_clock() > SystemTime::now() - Duration::from_millis(1));
    }

    /// The live media playlist at `ms` after the start: (media sequence, segment
    /// URIs), checked for what every live playlist has.
    fn live_at(ms: u64) -> (u64, Vec<String>) {
        let (kind, body) = answer(
            "/video/live/low/index.m3u8",
            Duration::from_millis(ms),
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(kind, "application/vnd.apple.mpegurl");
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains("#EXT-X-TARGETDURATION:1\n"), "{text}");
        assert!(!text.contains("#EXT-X-ENDLIST"), "live: {text}");
        assert!(!text.contains("#EXT-X-PLAYLIST-TYPE"), "{text}");
        let sequence = text
            .lines()
            .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
            .unwrap()
            .parse()
            .unwrap();
        let uris = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        (sequence, uris)
    }

    #[test]
    fn the_live_playlist_advances_with_time_and_keeps_the_last_six_segments() {
        assert_eq!(live_at(0), (0, vec![]), "nothing published yet");
        assert_eq!(live_at(999), (0, vec![]));
        assert_eq!(live_at(1_000), (0, vec!["seg0.ts".into()]));
        assert_eq!(
            live_at(2_500),
            (0, vec!["seg0.ts".into(), "seg1.ts".into()])
        );
        let six: Vec<String> = (0..6).map(|n| format!("seg{n}.ts")).collect();
        assert_eq!(live_at(6_000), (0, six));
        // Ten published: the window has scrolled past the first four.
        let last: Vec<String> = (4..10).map(|n| format!("seg{n}.ts")).collect();
        assert_eq!(live_at(10_400), (4, last));
        assert!(live_at(10_400).1.iter().all(|u| u.ends_with(".ts")));

        // Both renditions, same master as the VOD's; segments as the VOD's once
        // published, a 404 before (scrolled-off ones stay).
        let at = |path, ms| answer(path, Duration::from_millis(ms), SystemTime::UNIX_EPOCH);
        assert_eq!(at(LIVE_MASTER_PATH, 0).unwrap().1, master().into_bytes());
        assert!(at("/video/live/high/index.m3u8", 0).is_some());
        assert!(at("/video/live/low/seg0.ts", 999).is_none());
        assert_eq!(
            at("/video/live/low/seg0.ts", 1_000).unwrap().1.len(),
            250_000
        );
        assert_eq!(
            at("/video/live/high/seg0.ts", 60_000).unwrap().1.len(),
            3_750_000
        );
        assert!(at("/video/live/high/seg9.ts", 9_999).is_none());
        assert!(at("/video/live/mid/index.m3u8", 0).is_none());
    }
}
