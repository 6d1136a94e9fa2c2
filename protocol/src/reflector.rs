//! The reflector protocol: what a `udp` check's agent and the owner's reflector say to
//! each other over UDP.
//!
//! A stream only ever goes to a reflector that proved it is the site owner's: the agent
//! first sends a [`Packet::Hello`] for a session id it chose, and streams only if the
//! answer is a [`Packet::Welcome`] for that session carrying the check's site token
//! (the site's verification token, which the owner gives the reflector when starting
//! it). The agent then sends a [`Packet::Probe`] every interval; the reflector answers
//! each with a [`Packet::Echo`] as long as the probe, carrying back its sequence number
//! and send time and how many probes of the session the reflector has received so far,
//! so that the agent tells loss on the way there from loss on the way back (as IRTT's
//! server does).
//!
//! A reflector is no tool for attacking anyone else either. No answer is larger than
//! what it answers (a hello is padded to [`HELLO_LEN`], more than any welcome; an echo
//! is exactly its probe's length), so it cannot amplify. And it echoes only probes that
//! carry the **cookie** its welcome gave that source and session (a keyed hash the
//! reflector computes again, keeping no state), as DTLS and QUIC answer a first packet:
//! a probe with a forged source address never saw the welcome, so it is dropped, and
//! the reflector cannot be made to bounce a stream at someone else.
//!
//! Layout, big-endian: the magic `LMR1`, a type byte, the session id (8 bytes), then
//!
//! | type | rest |
//! | --- | --- |
//! | hello (1) | zeros up to [`HELLO_LEN`] |
//! | welcome (2) | the cookie (8), the token's length (1 byte), the token (UTF-8, at most [`MAX_TOKEN_LEN`] bytes) |
//! | probe (3) | the cookie (8), sequence number (4), the agent's send time in µs (8), zeros up to the probe's length |
//! | echo (4) | the cookie (8), sequence number (4), send time (8), probes received (4), zeros up to the probe's length |

use std::fmt;

/// The first four bytes of every packet.
pub const MAGIC: [u8; 4] = *b"LMR1";

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const PROBE: u8 = 3;
const ECHO: u8 = 4;

/// Magic, type and session id.
const HEADER_LEN: usize = 4 + 1 + 8;

/// The longest token a welcome carries (a site token is 68 bytes).
pub const MAX_TOKEN_LEN: usize = 128;

/// A hello's length: room for the longest welcome, so that the answer is never the
/// larger packet.
pub const HELLO_LEN: usize = 160;

/// The shortest probe: room for an echo's fields (the header, cookie, sequence number,
/// send time and count: 37 bytes).
pub const MIN_PROBE_LEN: usize = 40;

/// The longest probe: one that fits an IPv6 path's minimum MTU (1280) with its IP and
/// UDP headers, so that a stream is never fragmented.
pub const MAX_PROBE_LEN: usize = 1_200;

/// One packet of the reflector protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Agent -> reflector: "are you the reflector of this site?"
    Hello { session: u64 },
    /// Reflector -> agent: its site token, and the cookie the session's probes carry.
    Welcome {
        session: u64,
        cookie: u64,
        token: &'a str,
    },
    /// Agent -> reflector: one packet of the stream.
    Probe {
        session: u64,
        cookie: u64,
        seq: u32,
        sent_us: u64,
    },
    /// Reflector -> agent: a probe back, with the probes of its session received so far.
    Echo {
        session: u64,
        cookie: u64,
        seq: u32,
        sent_us: u64,
        received: u32,
    },
}

/// Why bytes are not a packet of this protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Not `LMR1`: some other protocol (or another version of this one).
    NotReflector,
    /// Shorter than its type needs, or a welcome whose token is not UTF-8.
    Malformed,
    /// A type byte this version does not know.
    UnknownType(u8),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::NotReflector => f.write_str("not a reflector packet"),
            DecodeError::Malformed => f.write_str("malformed reflector packet"),
            DecodeError::UnknownType(t) => write!(f, "unknown reflector packet type {t}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// What an answer to a hello says of the address it came from (the agent's and the
/// controller's handshakes both judge answers so).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A welcome for the session with the token: the site's reflector, and the cookie
    /// the session's probes carry.
    Welcomed { cookie: u64 },
    /// A welcome for the session with another token: a reflector, of another site.
    OtherToken,
    /// Not what a reflector says to a hello (another protocol, or another packet of
    /// this one): something else listens there. What it was, for the message.
    NotAReflector(String),
    /// A welcome for another session: a late answer to an earlier hello from the same
    /// address. Wait on.
    Ignore,
}

/// Judges `bytes`, an answer to the hello of `session`, against the site's `token`.
pub fn judge_answer(bytes: &[u8], session: u64, token: &str) -> Answer {
    match decode(bytes) {
        Ok(Packet::Welcome {
            session: s,
            cookie,
            token: t,
        }) if s == session => {
            if t == token {
                Answer::Welcomed { cookie }
            } else {
                Answer::OtherToken
            }
        }
        Ok(Packet::Welcome { .. }) => Answer::Ignore,
        Ok(other) => Answer::NotAReflector(format!("{other:?}")),
        Err(e) => Answer::NotAReflector(e.to_string()),
    }
}

fn header(kind: u8, session: u64, len: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&MAGIC);
    buf.push(kind);
    buf.extend_from_slice(&session.to_be_bytes());
    buf
}

/// A hello for `session`, [`HELLO_LEN`] bytes.
pub fn hello(session: u64) -> Vec<u8> {
    let mut buf = header(HELLO, session, HELLO_LEN);
    buf.resize(HELLO_LEN, 0);
    buf
}

/// A welcome for `session` with its `cookie` and `token`; `None` when the token is
/// longer than [`MAX_TOKEN_LEN`].
pub fn welcome(session: u64, cookie: u64, token: &str) -> Option<Vec<u8>> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let mut buf = header(WELCOME, session, HEADER_LEN + 9 + token.len());
    buf.extend_from_slice(&cookie.to_be_bytes());
    buf.push(token.len() as u8);
    buf.extend_from_slice(token.as_bytes());
    Some(buf)
}

/// Probe `seq` of `session` (whose welcome gave `cookie`), sent at `sent_us` on the
/// agent's clock, `len` bytes (held to [`MIN_PROBE_LEN`]..=[`MAX_PROBE_LEN`]).
pub fn probe(session: u64, cookie: u64, seq: u32, sent_us: u64, len: usize) -> Vec<u8> {
    let len = len.clamp(MIN_PROBE_LEN, MAX_PROBE_LEN);
    let mut buf = header(PROBE, session, len);
    buf.extend_from_slice(&cookie.to_be_bytes());
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&sent_us.to_be_bytes());
    buf.resize(len, 0);
    buf
}

/// The echo of `probe` (the bytes of a [`Packet::Probe`], as received), saying the
/// reflector has `received` probes of its session: the probe itself, its type and
/// count rewritten, so it is exactly as long. `None` for anything but a probe.
pub fn echo(probe: &[u8], received: u32) -> Option<Vec<u8>> {
    if !matches!(decode(probe), Ok(Packet::Probe { .. })) {
        return None;
    }
    let mut buf = probe.to_vec();
    buf[4] = ECHO;
    buf[HEADER_LEN + 20..HEADER_LEN + 24].copy_from_slice(&received.to_be_bytes());
    Some(buf)
}

/// The big-endian number at `at` (the caller checked the length).
fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_be_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(b)
}

/// Reads one packet.
pub fn decode(buf: &[u8]) -> Result<Packet<'_>, DecodeError> {
    if buf.len() < 4 || buf[..4] != MAGIC {
        return Err(DecodeError::NotReflector);
    }
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Malformed);
    }
    let session = u64_at(buf, 5);
    match buf[4] {
        HELLO if buf.len() >= HELLO_LEN => Ok(Packet::Hello { session }),
        WELCOME if buf.len() > HEADER_LEN + 8 => {
            let len = buf[HEADER_LEN + 8] as usize;
            let token = buf
                .get(HEADER_LEN + 9..HEADER_LEN + 9 + len)
                .and_then(|t| std::str::from_utf8(t).ok())
                .ok_or(DecodeError::Malformed)?;
            Ok(Packet::Welcome {
                session,
                cookie: u64_at(buf, HEADER_LEN),
                token,
            })
        }
        PROBE if buf.len() >= MIN_PROBE_LEN => Ok(Packet::Probe {
            session,
            cookie: u64_at(buf, HEADER_LEN),
            seq: u32_at(buf, HEADER_LEN + 8),
            sent_us: u64_at(buf, HEADER_LEN + 12),
        }),
        ECHO if buf.len() >= MIN_PROBE_LEN => Ok(Packet::Echo {
            session,
            cookie: u64_at(buf, HEADER_LEN),
            seq: u32_at(buf, HEADER_LEN + 8),
            sent_us: u64_at(buf, HEADER_LEN + 12),
            received: u32_at(buf, HEADER_LEN + 20),
        }),
        HELLO | WELCOME | PROBE | ECHO => Err(DecodeError::Malformed),
        other => Err(DecodeError::UnknownType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_packet_reads_back_as_written() {
        assert_eq!(decode(&hello(7)), Ok(Packet::Hello { session: 7 }));
        let token = format!("lms_{}", "ab".repeat(32));
        let w = welcome(7, 0xC00C1E, &token).unwrap();
        assert_eq!(
            decode(&w),
            Ok(Packet::Welcome {
                session: 7,
                cookie: 0xC00C1E,
                token: &token
            })
        );
        let p = probe(7, 0xC00C1E, 41, 123_456_789, 160);
        assert_eq!(p.len(), 160);
        assert_eq!(
            decode(&p),
            Ok(Packet::Probe {
                session: 7,
                cookie: 0xC00C1E,
                seq: 41,
                sent_us: 123_456_789
            })
        );
        let e = echo(&p, 40).unwrap();
        assert_eq!(e.len(), p.len(), "an echo is exactly as long as its probe");
        assert_eq!(
            decode(&e),
            Ok(Packet::Echo {
                session: 7,
                cookie: 0xC00C1E,
                seq: 41,
                sent_us: 123_456_789,
                received: 40
            })
        );
        // The shortest probe has room for every field of its echo.
        let short = echo(&probe(7, 1, 2, 3, MIN_PROBE_LEN), 4).unwrap();
        assert!(matches!(
            decode(&short),
            Ok(Packet::Echo { received: 4, .. })
        ));
    }

    #[test]
    fn no_answer_is_larger_than_what_it_answers() {
        let longest = welcome(1, u64::MAX, &"x".repeat(MAX_TOKEN_LEN)).unwrap();
        assert!(
            longest.len() <= HELLO_LEN,
            "{} > {HELLO_LEN}",
            longest.len()
        );
        assert!(welcome(1, 1, &"x".repeat(MAX_TOKEN_LEN + 1)).is_none());
        // A hello cut short is not a hello: a reflector answers none.
        assert_eq!(
            decode(&hello(1)[..HELLO_LEN - 1]),
            Err(DecodeError::Malformed)
        );
        // Probes are held to a length an echo fits in and no fragmenting needs.
        assert_eq!(probe(1, 1, 0, 0, 1).len(), MIN_PROBE_LEN);
        assert_eq!(probe(1, 1, 0, 0, 65_000).len(), MAX_PROBE_LEN);
        // Only a probe is echoed.
        assert!(echo(&hello(1), 1).is_none());
    }

    #[test]
    fn answers_to_a_hello_are_judged_by_session_and_token() {
        let welcome_of = |session, token| welcome(session, 99, token).unwrap();
        assert_eq!(
            judge_answer(&welcome_of(7, "lms_a"), 7, "lms_a"),
            Answer::Welcomed { cookie: 99 }
        );
        assert_eq!(
            judge_answer(&welcome_of(7, "lms_b"), 7, "lms_a"),
            Answer::OtherToken
        );
        assert_eq!(
            judge_answer(&welcome_of(6, "lms_a"), 7, "lms_a"),
            Answer::Ignore
        );
        // An echo service bounces the hello; a DNS server answers in its own protocol.
        assert!(matches!(
            judge_answer(&hello(7), 7, "lms_a"),
            Answer::NotAReflector(_)
        ));
        assert!(matches!(
            judge_answer(b"\x12\x34\x81\x80", 7, "lms_a"),
            Answer::NotAReflector(_)
        ));
    }

    #[test]
    fn other_protocols_and_bad_packets_are_told_apart() {
        assert_eq!(decode(b"GET / HTTP/1.1"), Err(DecodeError::NotReflector));
        assert_eq!(decode(b"LMR1"), Err(DecodeError::Malformed));
        let mut p = probe(1, 1, 0, 0, 40);
        p[4] = 9;
        assert_eq!(decode(&p), Err(DecodeError::UnknownType(9)));
        let mut w = welcome(1, 1, "abc").unwrap();
        w[HEADER_LEN + 8] = 10; // claims more token than it carries
        assert_eq!(decode(&w), Err(DecodeError::Malformed));
    }
}
