//! The demo site's stream: an HLS video on demand in two renditions, for `video` checks.
//!
//! [`MASTER_PATH`] is a master playlist naming a low and a high rendition by their
//! `BANDWIDTH`; each rendition's media playlist lists [`SEGMENTS`] segments of
//! [`SEGMENT_MS`] each (`#EXT-X-ENDLIST`: video on demand), whose bodies are
//! `bitrate × duration` bytes of noise, so a segment takes exactly its share of a line:
//! the high rendition (30 Mbit/s) outruns a 16 Mbit/s DSL line and stalls its player,
//! and plays on a 100 Mbit/s cable line. Playlists are made per request and each
//! rendition's segment body once per process (shared by every site), so a test site
//! that no one plays costs nothing.

use std::sync::OnceLock;

/// The master playlist.
pub const MASTER_PATH: &str = "/video/master.m3u8";

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

/// The master playlist's text.
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

/// What the site answers for `path` under `/video/`: `(content type, body)`, or
/// `None` for a path of no playlist or segment.
pub fn answer(path: &str) -> Option<(&'static str, Vec<u8>)> {
    if path == MASTER_PATH {
        return Some(("application/vnd.apple.mpegurl", master().into_bytes()));
    }
    let rest = path.strip_prefix("/video/")?;
    let (name, file) = rest.split_once('/')?;
    let index = RENDITIONS.iter().position(|r| r.name == name)?;
    if file == "index.m3u8" {
        return Some(("application/vnd.apple.mpegurl", media().into_bytes()));
    }
    let n: usize = file
        .strip_prefix("seg")?
        .strip_suffix(".ts")?
        .parse()
        .ok()?;
    if n >= SEGMENTS {
        return None;
    }
    Some(("video/mp2t", segment(index).to_vec()))
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
        let (kind, body) = answer("/video/high/index.m3u8").unwrap();
        assert_eq!(kind, "application/vnd.apple.mpegurl");
        let text = String::from_utf8(body).unwrap();
        assert_eq!(text.matches("#EXTINF:1.000,").count(), SEGMENTS);
        assert!(text.ends_with("#EXT-X-ENDLIST\n"), "{text}");
        // 30 Mbit/s for one second.
        assert_eq!(answer("/video/high/seg11.ts").unwrap().1.len(), 3_750_000);
        assert_eq!(answer("/video/low/seg0.ts").unwrap().1.len(), 250_000);
        assert!(answer("/video/high/seg12.ts").is_none());
        assert!(answer("/video/mid/index.m3u8").is_none());
        assert!(answer("/video/high/seg1.mp4").is_none());
    }
}
