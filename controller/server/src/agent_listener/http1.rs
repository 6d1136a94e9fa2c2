//! The HTTP/1.1 the agent listener speaks: only what the agent protocol's calls need,
//! built so that a connection waiting for its next request holds no buffer.
//!
//! actix-web (and hyper, measured side by side) keep an 8 KiB read buffer, and actix an
//! 8 KiB write buffer too, for as long as a keep-alive connection lives: about 10 KiB of
//! RSS for each idle agent before any of the controller's own state (issue 15's target
//! is 8 KiB in all). Here an idle connection is its socket, its timer and a few words of
//! state: it waits for the socket to become readable, reads what arrived into a buffer
//! on the stack, and allocates only for a request that has started to arrive. Bytes of a
//! next request sent early (pipelining) are kept until it is served; otherwise nothing
//! is held between requests.
//!
//! A request is admitted on its head ([`Service::admit`]) before any of its body is
//! read, so what will be refused (a stranger, a path not served) costs a head only.
//! What it accepts is deliberately narrow, and everything else gets a clear answer in
//! the API's error shape: request heads are parsed by `httparse` (at most
//! [`MAX_HEADERS`] headers and `max_head_bytes`), bodies must come with a
//! `Content-Length` (a chunked body is refused with 411, and a request with both is
//! refused, the shape request smuggling takes), at most `max_body_bytes` (413 without
//! reading it). `Expect: 100-continue` is honoured. A head must arrive within
//! `head` of its first byte and a body within `body` (408), so a slow client cannot
//! hold a request open; an idle connection is closed after `idle`, as actix's
//! keep-alive does. Answers always carry a `Content-Length` (a `HEAD`'s has no body);
//! after a refusal the connection is closed, and every close lingers a moment so that
//! the client reads the last answer rather than a reset.

use std::future::Future;
use std::io::{self, Write};
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout_at, Instant};

/// Most headers a request may have (an agent sends about six).
pub const MAX_HEADERS: usize = 48;

/// Bytes read from the socket at a time, into a buffer on the stack.
const READ_CHUNK: usize = 8 * 1024;

/// After a refusal, how long (and how many bytes) the rest of the request is read and
/// dropped before the socket closes, so that the client reads the refusal rather than a
/// reset (closing with unread data sends RST, which can discard the answer in flight).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// The listener's limits.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_body_bytes: usize,
    /// An idle keep-alive connection is closed after this.
    pub idle: Duration,
    /// From a request's first byte to the end of its head.
    pub head: Duration,
    /// From the end of a request's head to the end of its body.
    pub body: Duration,
    /// To write an answer.
    pub write: Duration,
}

/// A request, read whole.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    /// The `Authorization` header's bytes.
    pub authorization: Option<Vec<u8>>,
    /// Every `X-Forwarded-For` header, joined in order with commas.
    pub forwarded_for: String,
    /// The `Content-Type` header's bytes.
    pub content_type: Option<Vec<u8>>,
    pub body: Vec<u8>,
}

/// An answer: a status, extra headers and a JSON body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// An answer in the API's error shape: `{"error": code, "message": message}`.
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Response {
        let body = serde_json::json!({ "error": code, "message": message.into() });
        Response {
            status,
            headers: Vec::new(),
            body: body.to_string().into_bytes(),
        }
    }
}

/// What a request's head says about how to read and answer it.
#[derive(Debug)]
struct Head {
    request: Request,
    content_length: usize,
    expect_continue: bool,
    keep_alive: bool,
    http_10: bool,
}

/// What answers a connection's requests.
pub trait Service {
    /// What admitting a request yields for answering it (e.g. the caller, authenticated).
    type Admitted;

    /// Decides from the head alone, before any of the body is read (or `100 Continue`
    /// sent), whether the request is read on: a request for something not served, or
    /// from someone unknown, costs no more than its head. A refusal closes the
    /// connection (its body is never read); the service logs it.
    fn admit<'a>(
        &'a self,
        request: &'a Request,
    ) -> Pin<Box<dyn Future<Output = Result<Self::Admitted, Response>> + Send + 'a>>;

    /// Answers an admitted request, read whole.
    fn answer<'a>(
        &'a self,
        admitted: Self::Admitted,
        request: Request,
    ) -> Pin<Box<dyn Future<Output = Response> + Send + 'a>>;

    /// A request this module refused itself (malformed, too large, too slow: `request`
    /// is `None` when its head could not be read), for the log and the counters.
    fn refused(&self, request: Option<&Request>, refusal: &Response);
}

/// Serves requests on `stream` one after another, until the client closes, the
/// connection idles past `limits.idle`, a request is refused, or `stop` turns true (a
/// connection between requests closes at once; one in the middle of a request finishes
/// it and says `connection: close`). While a call runs the socket is watched: a client
/// that closes its side (an agent giving up a long poll; a half-close reads the same)
/// drops the call, unless bytes of its next request came first.
pub async fn serve<S: Service>(
    mut stream: TcpStream,
    limits: &Limits,
    mut stop: watch::Receiver<bool>,
    service: &S,
) {
    let mut early = Vec::new();
    loop {
        let mut head = match read_head(&stream, &mut early, limits, &mut stop).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(refusal) => {
                service.refused(None, &refusal);
                return close(stream, Some((&refusal, false)), limits).await;
            }
        };
        let head_only = head.request.method == "HEAD";
        let admitted = match service.admit(&head.request).await {
            Ok(admitted) => admitted,
            Err(refusal) => return close(stream, Some((&refusal, head_only)), limits).await,
        };
        match read_body(&mut stream, &mut early, &mut head, limits).await {
            Ok(()) => {}
            Err(Some(refusal)) => {
                service.refused(Some(&head.request), &refusal);
                return close(stream, Some((&refusal, head_only)), limits).await;
            }
            Err(None) => return,
        }
        // Nothing is kept between requests but bytes of the next one.
        if early.is_empty() {
            early = Vec::new();
        } else {
            early.shrink_to_fit();
        }
        let Head {
            request,
            keep_alive,
            http_10,
            ..
        } = head;
        let answer = {
            let handling = service.answer(admitted, request);
            tokio::pin!(handling);
            tokio::select! {
                biased;
                answer = &mut handling => answer,
                gone = hung_up(&stream), if early.is_empty() => {
                    if gone {
                        return;
                    }
                    // Bytes of a next request: it is read once this one is answered.
                    handling.await
                }
            }
        };
        let keep_alive = keep_alive && !*stop.borrow();
        let framing = Framing {
            close: !keep_alive,
            keep_alive_10: http_10 && keep_alive,
            head_only,
        };
        if write(&mut stream, &encode(&answer, framing), limits)
            .await
            .is_err()
        {
            return;
        }
        if !keep_alive {
            return close(stream, None, limits).await;
        }
    }
}

/// Whether the client closed the connection (rather than sending more bytes).
async fn hung_up(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    !matches!(stream.peek(&mut byte).await, Ok(n) if n > 0)
}

/// Reads the next request's head. `Ok(None)`: the connection is over without a request
/// (closed by the client, idle past the limit, or the listener stopping).
async fn read_head(
    stream: &TcpStream,
    early: &mut Vec<u8>,
    limits: &Limits,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<Head>, Response> {
    let idle_until = Instant::now() + limits.idle;
    let mut head_until = None;
    // Bytes already looked at for the blank line that ends a head: a head arriving a
    // byte at a time is parsed once, when it is complete, not once a byte.
    let mut scanned = 0;
    loop {
        if !early.is_empty() {
            if ends_a_head(early, scanned) {
                if let Some((head, used)) = parse_head(early, limits)? {
                    early.drain(..used);
                    return Ok(Some(head));
                }
            } else if early.len() >= limits.max_head_bytes {
                return Err(head_too_large(limits));
            }
            scanned = early.len();
            head_until.get_or_insert_with(|| Instant::now() + limits.head);
        }
        if early.is_empty() && *stop.borrow() {
            return Ok(None);
        }
        let until = head_until.unwrap_or(idle_until);
        tokio::select! {
            ready = timeout_at(until, stream.readable()) => match ready {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Ok(None),
                Err(_) if early.is_empty() => return Ok(None),
                Err(_) => {
                    return Err(Response::error(
                        408,
                        "request_timeout",
                        format!("the request's head did not arrive within {} s", limits.head.as_secs()),
                    ))
                }
            },
            // Between requests only: a request that has begun is read and answered.
            changed = stop.changed(), if early.is_empty() => {
                if changed.is_err() {
                    return Ok(None);
                }
                continue;
            }
        }
        match read_some(stream, early, limits.max_head_bytes + READ_CHUNK) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Ok(None),
        }
    }
}

/// Whether `bytes` hold the blank line that ends a head (`\n\n`, or `\n\r\n`), looking
/// only at what came after `scanned` (and the three bytes before it).
fn ends_a_head(bytes: &[u8], scanned: usize) -> bool {
    let from = scanned.saturating_sub(3);
    bytes[from..]
        .windows(2)
        .enumerate()
        .any(|(i, w)| w == b"\n\n" || (w == b"\n\r" && bytes.get(from + i + 2) == Some(&b'\n')))
}

fn head_too_large(limits: &Limits) -> Response {
    Response::error(
        431,
        "headers_too_large",
        format!(
            "the request's head is over {} bytes or {MAX_HEADERS} headers",
            limits.max_head_bytes
        ),
    )
}

/// Reads what the socket has (without waiting) onto `into`, up to `cap` bytes in all.
/// A separate, synchronous function so that the stack buffer is never part of the
/// connection's future.
fn read_some(stream: &TcpStream, into: &mut Vec<u8>, cap: usize) -> io::Result<usize> {
    let mut chunk = [0u8; READ_CHUNK];
    let room = cap.saturating_sub(into.len()).min(READ_CHUNK);
    if room == 0 {
        return Ok(1);
    }
    let n = stream.try_read(&mut chunk[..room])?;
    into.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Parses a complete head at the start of `bytes`: the head and its length, or `None`
/// when more bytes are needed.
fn parse_head(bytes: &[u8], limits: &Limits) -> Result<Option<(Head, usize)>, Response> {
    let too_large = || head_too_large(limits);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let used = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) if bytes.len() >= limits.max_head_bytes => {
            return Err(too_large())
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(too_large()),
        Err(e) => {
            return Err(Response::error(
                400,
                "bad_request",
                format!("the request is not HTTP/1.1: {e}"),
            ))
        }
    };
    if used > limits.max_head_bytes {
        return Err(too_large());
    }
    let bad = |message: String| Response::error(400, "bad_request", message);
    let method = parsed.method.unwrap_or_default().to_owned();
    let path = origin_form(parsed.path.unwrap_or_default())
        .ok_or_else(|| bad("the request target is not a path".into()))?
        .to_owned();
    let http_11 = parsed.version == Some(1);
    let mut head = Head {
        request: Request {
            method,
            path,
            authorization: None,
            forwarded_for: String::new(),
            content_type: None,
            body: Vec::new(),
        },
        content_length: 0,
        expect_continue: false,
        keep_alive: http_11,
        http_10: !http_11,
    };
    let mut length: Option<usize> = None;
    let mut hosts = 0;
    let mut chunked = false;
    for header in parsed.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| bad("Content-Length is not a number".into()))?;
            if length.is_some_and(|l| l != value) {
                return Err(bad("the request has two different Content-Lengths".into()));
            }
            length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    head.keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && !http_11 {
                    head.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("authorization") {
            head.request.authorization = Some(header.value.to_vec());
        } else if name.eq_ignore_ascii_case("content-type") {
            head.request.content_type = Some(header.value.to_vec());
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            // One list, in order, however many headers carry it; bytes that are not
            // text are left out (the address is then the peer's, or the list's last
            // trusted hop, as `Geo::client_ip` decides).
            if let Ok(v) = std::str::from_utf8(header.value) {
                if !head.request.forwarded_for.is_empty() {
                    head.request.forwarded_for.push(',');
                }
                head.request.forwarded_for.push_str(v.trim());
            }
        } else if name.eq_ignore_ascii_case("expect") {
            if !header
                .value
                .trim_ascii()
                .eq_ignore_ascii_case(b"100-continue")
            {
                return Err(Response::error(
                    417,
                    "expectation_failed",
                    "the only expectation understood is 100-continue",
                ));
            }
            // An HTTP/1.0 client does not know 100 Continue: it just sends its body.
            head.expect_continue = http_11;
        }
    }
    if http_11 && hosts == 0 {
        return Err(bad("an HTTP/1.1 request needs a Host header".into()));
    }
    if hosts > 1 {
        return Err(bad("the request has more than one Host header".into()));
    }
    if chunked {
        // Refused whatever its value, with or without a Content-Length beside it (the
        // shape request smuggling takes); agents send every body with a length.
        return Err(Response::error(
            411,
            "length_required",
            "send the body with a Content-Length: Transfer-Encoding is not accepted here",
        ));
    }
    head.content_length = length.unwrap_or(0);
    if head.content_length > limits.max_body_bytes {
        return Err(Response::error(
            413,
            "payload_too_large",
            format!(
                "body of {} bytes is over the limit of {} bytes",
                head.content_length, limits.max_body_bytes
            ),
        ));
    }
    Ok(Some((head, used)))
}

/// The path of a request target, without its query string: origin form (`/a/b?q`) as
/// clients send it, or absolute form (`http://host/a/b`) as proxies may.
fn origin_form(target: &str) -> Option<&str> {
    let path = match target.split_once("://") {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            rest.find('/').map(|i| &rest[i..]).unwrap_or("/")
        }
        _ => target,
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.starts_with('/').then_some(path)
}

/// Reads the body `head` announced into its request: first what arrived with the head,
/// then the rest. `Err(None)`: the client went away.
async fn read_body(
    stream: &mut TcpStream,
    early: &mut Vec<u8>,
    head: &mut Head,
    limits: &Limits,
) -> Result<(), Option<Response>> {
    let length = head.content_length;
    if length == 0 {
        return Ok(());
    }
    let mut body = vec![0u8; length];
    let ready = early.len().min(length);
    body[..ready].copy_from_slice(&early[..ready]);
    early.drain(..ready);
    if ready < length && head.expect_continue {
        write(stream, b"HTTP/1.1 100 Continue\r\n\r\n", limits)
            .await
            .map_err(|_| None)?;
    }
    let until = Instant::now() + limits.body;
    let mut filled = ready;
    while filled < length {
        match timeout_at(until, stream.read(&mut body[filled..])).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(None),
            Ok(Ok(n)) => filled += n,
            Err(_) => {
                return Err(Some(Response::error(
                    408,
                    "request_timeout",
                    format!(
                        "the body did not arrive within {} s ({filled} of {length} bytes came)",
                        limits.body.as_secs()
                    ),
                )))
            }
        }
    }
    head.request.body = body;
    Ok(())
}

/// How an answer is framed besides its status and body.
#[derive(Debug, Clone, Copy, Default)]
struct Framing {
    /// The connection closes after it (`connection: close`).
    close: bool,
    /// An HTTP/1.0 client asked to keep the connection: say it is kept.
    keep_alive_10: bool,
    /// The answer to a `HEAD`: its headers only (the body's length still said).
    head_only: bool,
}

/// The answer's bytes: status line, headers, body.
fn encode(answer: &Response, framing: Framing) -> Vec<u8> {
    let reason = actix_web::http::StatusCode::from_u16(answer.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = Vec::with_capacity(192 + answer.body.len());
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {} {reason}\r\ndate: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        answer.status,
        httpdate::fmt_http_date(std::time::SystemTime::now()),
        answer.body.len()
    );
    for (name, value) in &answer.headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if framing.close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if framing.keep_alive_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !framing.head_only {
        out.extend_from_slice(&answer.body);
    }
    out
}

async fn write(stream: &mut TcpStream, bytes: &[u8], limits: &Limits) -> io::Result<()> {
    timeout_at(Instant::now() + limits.write, stream.write_all(bytes))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// Closes the connection, after writing `answer` (a refusal, and whether it answers a
/// `HEAD`) if given: its side is shut, then what the client still sends is read and
/// dropped for a moment (see [`LINGER`]), so that it reads the answer rather than a
/// reset.
async fn close(mut stream: TcpStream, answer: Option<(&Response, bool)>, limits: &Limits) {
    if let Some((answer, head_only)) = answer {
        let framing = Framing {
            close: true,
            head_only,
            ..Framing::default()
        };
        if write(&mut stream, &encode(answer, framing), limits)
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = stream.shutdown().await;
    let until = Instant::now() + LINGER;
    let mut dropped = 0;
    while dropped < LINGER_BYTES {
        match timeout_at(until, stream.readable()).await {
            Ok(Ok(())) => match discard(&stream) {
                Ok(0) => return,
                Ok(n) => dropped += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            },
            _ => return,
        }
    }
}

/// Reads what the socket has and drops it (synchronous, like [`read_some`], so that
/// the buffer is not part of the connection's future).
fn discard(stream: &TcpStream) -> io::Result<usize> {
    let mut sink = [0u8; READ_CHUNK];
    stream.try_read(&mut sink)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_head_bytes: 1024,
            max_body_bytes: 100,
            idle: Duration::from_secs(5),
            head: Duration::from_secs(5),
            body: Duration::from_secs(5),
            write: Duration::from_secs(5),
        }
    }

    fn parse(text: &str) -> Result<Option<(Head, usize)>, Response> {
        parse_head(text.as_bytes(), &limits())
    }

    fn refused(text: &str) -> u16 {
        match parse(text) {
            Err(r) => r.status,
            Ok(h) => panic!("accepted: {h:?}"),
        }
    }

    #[test]
    fn a_head_says_its_path_credentials_and_body() {
        let text = "POST /api/v1/agents/lease?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\n\
                    X-Forwarded-For: 1.2.3.4\r\nx-forwarded-for: 5.6.7.8\r\ncontent-type: application/json\r\n\
                    Content-Length: 2\r\n\r\n{}";
        let (head, used) = parse(text).unwrap().unwrap();
        assert_eq!(used, text.len() - 2);
        assert_eq!(head.request.method, "POST");
        assert_eq!(head.request.path, "/api/v1/agents/lease");
        assert_eq!(
            head.request.authorization.as_deref(),
            Some(&b"Bearer t"[..])
        );
        assert_eq!(head.request.forwarded_for, "1.2.3.4,5.6.7.8");
        assert_eq!(head.content_length, 2);
        assert!(head.keep_alive);
        assert!(parse("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
    }

    #[test]
    fn connection_headers_decide_keep_alive() {
        let keep = |t: &str| parse(t).unwrap().unwrap().0.keep_alive;
        assert!(!keep(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        ));
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!keep(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n"
        ));
    }

    #[test]
    fn requests_the_listener_cannot_read_safely_are_refused() {
        // Smuggling shapes: chunked (with or without a length), two lengths.
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            400
        );
        for length in ["-1", "+3", "3 3", "0x10", "", "99999999999999999999"] {
            let text = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\n\r\n");
            assert_eq!(refused(&text), 400, "{length:?}");
        }
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n"),
            413
        );
        assert_eq!(refused("GET / HTTP/1.1\r\n\r\n"), 400, "no Host");
        assert_eq!(refused("GET /\u{1} HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(refused("GET * HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(
            refused("GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n"),
            417
        );
        let many = (0..=MAX_HEADERS)
            .map(|i| format!("x-{i}: y\r\n"))
            .collect::<String>();
        assert_eq!(
            refused(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
            431
        );
        let long = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nx: {}\r\n\r\n",
            "y".repeat(1100)
        );
        assert_eq!(refused(&long), 431);
        // Still arriving, but already past the limit.
        assert_eq!(
            refused(&format!("GET / HTTP/1.1\r\nx: {}", "y".repeat(1100))),
            431
        );
    }

    #[test]
    fn a_head_is_parsed_once_its_blank_line_came() {
        let text = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for end in 0..text.len() {
            assert!(!ends_a_head(&text[..end], 0), "{end}");
        }
        assert!(ends_a_head(text, 0));
        // Only what came after `scanned` (and the three bytes before) is looked at.
        assert!(ends_a_head(text, text.len() - 1));
        assert!(ends_a_head(b"GET / HTTP/1.0\n\n", 15));
        assert!(!ends_a_head(b"x\n\nGET / HTTP/1.1\r\nHost: a\r\n", 10));
        assert_eq!(
            refused("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            400,
            "two Hosts"
        );
    }

    #[test]
    fn request_targets_become_paths() {
        assert_eq!(origin_form("/a/b?c=d"), Some("/a/b"));
        assert_eq!(origin_form("http://host:1/a?x"), Some("/a"));
        assert_eq!(origin_form("HTTPS://host"), Some("/"));
        assert_eq!(origin_form("*"), None);
        assert_eq!(origin_form("host:443"), None);
    }

    #[test]
    fn answers_carry_their_length_and_say_when_they_close() {
        let answer = Response::error(404, "not_found", "no");
        let closing = Framing {
            close: true,
            ..Framing::default()
        };
        let text = String::from_utf8(encode(&answer, closing)).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains(&format!("content-length: {}\r\n", answer.body.len())));
        assert!(text.contains("connection: close\r\n"));
        assert!(
            text.ends_with(r#"{"error":"not_found","message":"no"}"#),
            "{text}"
        );
        let kept = String::from_utf8(encode(&answer, Framing::default())).unwrap();
        assert!(!kept.contains("connection:"));
        let head = Framing {
            head_only: true,
            ..Framing::default()
        };
        let text = String::from_utf8(encode(&answer, head)).unwrap();
        assert!(text.ends_with("\r\n\r\n"), "no body after HEAD: {text}");
        assert!(text.contains(&format!("content-length: {}\r\n", answer.body.len())));
        let ten = Framing {
            keep_alive_10: true,
            ..Framing::default()
        };
        let text = String::from_utf8(encode(&answer, ten)).unwrap();
        assert!(text.contains("connection: keep-alive\r\n"));
    }
}

#[cfg(test)]
mod size {
    use super::*;

    /// Answers 404 to everything.
    struct NotFound;

    impl Service for NotFound {
        type Admitted = ();

        fn admit<'a>(
            &'a self,
            _: &'a Request,
        ) -> Pin<Box<dyn Future<Output = Result<(), Response>> + Send + 'a>> {
            Box::pin(async { Err(Response::error(404, "not_found", "")) })
        }

        fn answer<'a>(
            &'a self,
            _: (),
            _: Request,
        ) -> Pin<Box<dyn Future<Output = Response> + Send + 'a>> {
            Box::pin(async { Response::error(404, "not_found", "") })
        }

        fn refused(&self, _: Option<&Request>, _: &Response) {}
    }

    /// Every connection's task is as big as its future's largest state, waiting or not:
    /// nothing big may be held across an await (a buffer on the stack of an async
    /// function is), or every idle agent pays for it.
    #[tokio::test]
    async fn a_connection_waiting_for_its_next_request_is_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (_stop, stopped) = watch::channel(false);
        let limits = Limits {
            max_head_bytes: 1024,
            max_body_bytes: 1024,
            idle: Duration::from_secs(1),
            head: Duration::from_secs(1),
            body: Duration::from_secs(1),
            write: Duration::from_secs(1),
        };
        let serving = serve(stream, &limits, stopped, &NotFound);
        // 1,264 bytes in a debug build (timers and readiness futures, laid out less
        // tightly than in release); 5,056 when a refusal drained the socket through a
        // 4 KiB array on its stack.
        let size = std::mem::size_of_val(&serving);
        assert!(size <= 1536, "a connection's future is {size} bytes");
    }
}
