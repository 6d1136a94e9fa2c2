//! A page load: the HTML document and every sub-resource it makes a browser fetch,
//! over the connections a browser would use, with the page's own limits.
//!
//! The document is fetched first (redirects followed as for an `http` check); its
//! sub-resources are found by [`crate::discover`], fetched, and fetched stylesheets are
//! parsed in turn for fonts, images and imports. Everything goes through the engine's
//! own steps (resolver, guard, connect, TLS, hyper, decoding, error classification), so
//! each request has the phase timings of DESIGN.md and every connection, to any host
//! the page names, passes the target guard.
//!
//! Connections, as a browser's first visit: per origin (scheme, host, port) at most
//! [`MAX_CONNECTIONS_PER_HOST`] HTTP/1.1 connections at once, each kept alive and
//! reused for the next request of that origin; when TLS's ALPN agrees on `h2`, one
//! HTTP/2 connection carries every request of that origin (the other requests wait
//! for the first handshake to learn which). A host's name is resolved once per page
//! load and only addresses that passed the guard are connected to. Every connection is
//! opened for this page load and closed at its end: nothing is shared between
//! measurements.
//!
//! Limits: at most `max_resources` sub-resources (one more fails the page with
//! `page_too_many_resources`), at most `max_bytes` for the whole page, wire or decoded
//! (`page_too_large`), and the task's time limit for the whole load (`total_timeout`,
//! or the phase the document was in). A sub-resource that fails is listed in
//! `failed` and does not fail the page; a failed document fails it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lastmile_protocol::{
    ErrorKind, FailedResource, Measurement, MeasurementError, PageSummary, ResourceCounts,
    ResourceTiming, ResourceType, Timings,
};
use tokio::net::TcpStream;
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};
use url::Url;

use crate::discover::{self, Discovered};
use crate::measure::{
    as_http2, fail, micros, parse_task_url, read_response, request_for, timed_send, EmptyBody,
    Engine, Expectations, Next, Probe, Sent, SharedBudget, Stage, Target, Trace,
};

/// HTTP/1.1 connections per origin at once, as every major browser allows.
pub const MAX_CONNECTIONS_PER_HOST: usize = 6;

/// Longest a kept-alive connection may take to say it can carry another request
/// before a fresh one is opened instead.
const REUSE_WAIT: Duration = Duration::from_secs(2);

/// What a page load may fetch besides the task's expectations.
#[derive(Debug, Clone, Copy)]
pub struct PageLimits {
    /// Sub-resources at most; one more is `page_too_many_resources`.
    pub max_resources: u32,
}

impl Default for PageLimits {
    fn default() -> Self {
        PageLimits {
            max_resources: lastmile_protocol::DEFAULT_MAX_PAGE_RESOURCES,
        }
    }
}

impl Engine {
    /// Loads the page at `url` as a browser's first visit would and reports it. The
    /// expectations (status, `body_contains`, redirects) apply to the HTML document;
    /// `max_bytes` and `timeout` to the whole page. Never fails: a failure is a
    /// measurement with an error kind.
    pub async fn measure_page(
        &self,
        url: &str,
        expect: &Expectations,
        limits: PageLimits,
    ) -> Measurement {
        let start = Instant::now();
        let load = Arc::new(Load {
            engine: self.clone(),
            start,
            max_bytes: expect.max_bytes,
            max_resources: limits.max_resources,
            origins: Mutex::new(HashMap::new()),
            drivers: Mutex::new(Vec::new()),
            connections: AtomicU32::new(0),
            tally: Mutex::new(Tally::default()),
            budget: Arc::new(SharedBudget::new(expect.max_bytes)),
        });
        let measurement = load.run(url, expect).await;
        // Every connection of this page load ends with it.
        load.close_all();
        measurement
    }
}

/// One page load's shared state.
struct Load {
    engine: Engine,
    start: Instant,
    max_bytes: u64,
    max_resources: u32,
    origins: Mutex<HashMap<String, Arc<Origin>>>,
    /// The tasks driving this load's connections, ended with the load.
    drivers: Mutex<Vec<tokio::task::AbortHandle>>,
    connections: AtomicU32,
    tally: Mutex<Tally>,
    /// Every body of the page, the document's and the sub-resources', counted frame by
    /// frame against `max_bytes` (sub-resources in flight at once draw on it together).
    budget: Arc<SharedBudget>,
}

/// What the finished sub-resources added up to so far (their bytes are the budget's).
#[derive(Default)]
struct Tally {
    resources: u32,
    by_type: ResourceCounts,
    slowest: Option<ResourceTiming>,
    failed: Vec<FailedResource>,
    last_byte: Option<Instant>,
}

/// The outcome of one sub-resource.
struct Fetched {
    url: Url,
    kind: ResourceType,
    status: Option<u16>,
    bytes: u64,
    queued: Duration,
    timings: Timings,
    error: Option<MeasurementError>,
    last_byte: Option<Instant>,
    /// What a stylesheet references (empty for anything else).
    references: Vec<Discovered>,
}

impl Load {
    async fn run(self: &Arc<Self>, url: &str, expect: &Expectations) -> Measurement {
        let mut trace = Trace {
            hops: Vec::new(),
            current: Probe::new(self.start),
        };
        trace.current.shared = Some(self.budget.clone());
        let document = tokio::time::timeout(expect.timeout, self.document(url, expect, &mut trace))
            .await
            .unwrap_or_else(|_| Err(trace.current.timed_out(expect.timeout)));
        let document_timings = trace.current.timings();
        let (document_url, body, content_type) = match document {
            Ok(found) => found,
            Err(e) => {
                let mut m = trace.into_measurement(self.start, Some(e));
                m.page = Some(self.summary(m.timings_us.total, document_timings, url));
                return m;
            }
        };

        let references = if content_type.as_deref().is_none_or(|t| t.contains("html")) {
            discover::html(&String::from_utf8_lossy(&body), &document_url)
        } else {
            Vec::new()
        };
        let remaining = expect.timeout.saturating_sub(self.start.elapsed());
        let outcome = tokio::time::timeout(remaining, self.sub_resources(references))
            .await
            .unwrap_or_else(|_| {
                let done = self.tally.lock().map(|t| t.resources).unwrap_or_default();
                Err(fail(
                    ErrorKind::TotalTimeout,
                    format!(
                        "the page did not finish loading within {} ms ({done} sub-resources requested)",
                        expect.timeout.as_millis()
                    ),
                ))
            });
        let mut m = trace.into_measurement(self.start, outcome.err());
        // The page total runs to the last byte of whatever ended last.
        let last = self
            .tally
            .lock()
            .ok()
            .and_then(|t| t.last_byte)
            .map_or(m.timings_us.total, |at| {
                micros(at.saturating_duration_since(self.start))
            });
        if m.error.is_some() {
            m.timings_us.total = micros(self.start.elapsed());
        } else {
            m.timings_us.total = m.timings_us.total.max(last);
        }
        let summary = self.summary(m.timings_us.total, document_timings, document_url.as_str());
        m.bytes = summary.bytes;
        m.bytes_decoded = summary.bytes_decoded;
        m.page = Some(summary);
        m
    }

    fn summary(
        &self,
        total_us: u64,
        document_timings_us: Timings,
        document_url: &str,
    ) -> PageSummary {
        let tally = self.tally.lock();
        let Ok(t) = tally.as_deref() else {
            return PageSummary::default();
        };
        PageSummary {
            total_us,
            document_timings_us,
            document_url: shown(document_url, SHOWN_URL_BYTES),
            resources: t.resources,
            // Everything downloaded (the document, sub-resources, redirects), as the
            // shared budget counted it frame by frame: a page cut short (a limit, the
            // time) still says what its downloads in flight took, for the volunteer's
            // daily allowance and the line rules.
            bytes: self.budget.wire.load(Ordering::SeqCst),
            bytes_decoded: self.budget.decoded.load(Ordering::SeqCst),
            connections: self.connections.load(Ordering::SeqCst),
            by_type: t.by_type,
            slowest: t.slowest.clone(),
            failed: t.failed.clone(),
        }
    }

    /// Fetches the document, following redirects, and keeps its body.
    async fn document(
        self: &Arc<Self>,
        url: &str,
        expect: &Expectations,
        trace: &mut Trace,
    ) -> Result<(Url, Vec<u8>, Option<String>), MeasurementError> {
        let url = parse_task_url(url)?;
        let (url, body) = self.follow(url, expect, trace, true).await?;
        Ok((url, body, trace.current.content_type.clone()))
    }

    /// Requests `url` and the redirects it leads to (as the engine follows them,
    /// but over this load's connections); returns the final URL and, when `keep`, the
    /// decoded body.
    async fn follow(
        self: &Arc<Self>,
        mut url: Url,
        expect: &Expectations,
        trace: &mut Trace,
        keep: bool,
    ) -> Result<(Url, Vec<u8>), MeasurementError> {
        loop {
            if keep {
                trace.current.body = Some(Vec::new());
            }
            let follow = expect.max_redirects > 0;
            let origin = self.origin(&url)?;
            let location = match origin.exchange(self, &url, expect, follow, trace).await? {
                Next::Done => {
                    let body = trace.current.body.take().unwrap_or_default();
                    return Ok((url, body));
                }
                Next::Redirect(location) => location,
            };
            url = trace.redirect(&url, &location, expect.max_redirects)?;
        }
    }

    /// Fetches the sub-resources, and what fetched stylesheets reference, until all are
    /// done; fails the page when a limit is passed.
    async fn sub_resources(
        self: &Arc<Self>,
        first: Vec<Discovered>,
    ) -> Result<(), MeasurementError> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut queue = first;
        loop {
            let new: Vec<Discovered> = queue
                .drain(..)
                .filter(|d| seen.insert(d.url.as_str().to_owned()))
                .collect();
            // Refused before any of them is requested.
            if seen.len() as u32 > self.max_resources {
                return Err(fail(
                    ErrorKind::PageTooManyResources,
                    format!(
                        "the page references more than {} sub-resources ({} found so far)",
                        self.max_resources,
                        seen.len()
                    ),
                ));
            }
            for d in new {
                let load = self.clone();
                tasks.spawn(async move { load.resource(d).await });
            }
            let Some(joined) = tasks.join_next().await else {
                return Ok(());
            };
            let Ok(fetched) = joined else {
                continue;
            };
            queue = fetched.references.clone();
            self.record(fetched)?;
        }
    }

    /// Counts one finished sub-resource; past the page's byte limit the page fails.
    fn record(&self, f: Fetched) -> Result<(), MeasurementError> {
        let mut t = self
            .tally
            .lock()
            .map_err(|_| fail(ErrorKind::Http, "page state poisoned"))?;
        t.resources += 1;
        t.by_type.add(f.kind);
        if let Some(at) = f.last_byte {
            t.last_byte = Some(t.last_byte.map_or(at, |prev| prev.max(at)));
        }
        let too_large = f
            .error
            .as_ref()
            .is_some_and(|e| e.kind == ErrorKind::BodyTooLarge);
        match f.error {
            Some(error) => t.failed.push(FailedResource {
                url: shown(f.url.as_str(), SHOWN_URL_BYTES),
                kind: f.kind,
                status: f.status,
                error: MeasurementError {
                    message: shown(&error.message, SHOWN_MESSAGE_BYTES),
                    ..error
                },
            }),
            None => {
                let slower = t
                    .slowest
                    .as_ref()
                    .is_none_or(|s| f.timings.total > s.timings_us.total);
                if slower {
                    t.slowest = Some(ResourceTiming {
                        url: shown(f.url.as_str(), SHOWN_URL_BYTES),
                        kind: f.kind,
                        status: f.status,
                        bytes: f.bytes,
                        queued_us: micros(f.queued),
                        timings_us: f.timings,
                    });
                }
            }
        }
        // Every body of the page, in flight ones too, as its shared budget counted them.
        let spent = self
            .budget
            .wire
            .load(Ordering::SeqCst)
            .max(self.budget.decoded.load(Ordering::SeqCst));
        if too_large || spent > self.max_bytes {
            return Err(fail(
                ErrorKind::PageTooLarge,
                format!(
                    "the page is larger than the limit of {} bytes (at {})",
                    self.max_bytes, f.url
                ),
            ));
        }
        Ok(())
    }

    /// Fetches one sub-resource, following its redirects.
    async fn resource(self: Arc<Self>, d: Discovered) -> Fetched {
        let queued_from = Instant::now();
        let mut trace = Trace {
            hops: Vec::new(),
            current: Probe::new(queued_from),
        };
        trace.current.shared = Some(self.budget.clone());
        let expect = Expectations {
            status: Vec::new(),
            body_contains: None,
            // The page's budget, shared by everything in flight (`trace.current.shared`);
            // past it the page fails (`page_too_large`).
            max_bytes: self.max_bytes,
            timeout: Duration::MAX,
            max_redirects: lastmile_protocol::DEFAULT_MAX_REDIRECTS,
        };
        let keep = d.kind == ResourceType::Stylesheet;
        let outcome = self.follow(d.url.clone(), &expect, &mut trace, keep).await;
        let queued = trace.current.queued;
        let last_byte = trace.current.last_byte;
        let m = trace.into_measurement(queued_from, None);
        let mut timings = m.timings_us;
        // Its own total: from when it had a connection, not from when it was found.
        timings.total = timings.total.saturating_sub(micros(queued));
        let (error, references) = match outcome {
            Ok((final_url, body)) if keep => (
                None,
                discover::stylesheet(&String::from_utf8_lossy(&body), &final_url),
            ),
            Ok(_) => (None, Vec::new()),
            Err(e) => (Some(e), Vec::new()),
        };
        Fetched {
            url: d.url,
            kind: d.kind,
            status: m.status,
            bytes: m.bytes,
            queued,
            timings,
            error,
            last_byte,
            references,
        }
    }

    /// The connection pool of `url`'s origin, made on first use.
    fn origin(&self, url: &Url) -> Result<Arc<Origin>, MeasurementError> {
        let Target { https, host, port } = Target::of(url)?;
        let key = format!("{}://{host}:{port}", url.scheme());
        let mut origins = self
            .origins
            .lock()
            .map_err(|_| fail(ErrorKind::Http, "page state poisoned"))?;
        Ok(origins
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Origin {
                    https,
                    host,
                    port,
                    addrs: OnceCell::new(),
                    slots: Arc::new(Semaphore::new(MAX_CONNECTIONS_PER_HOST)),
                    idle: Mutex::new(Vec::new()),
                    alpn: tokio::sync::Mutex::new(Alpn::Unknown),
                })
            })
            .clone())
    }

    /// Runs a connection's driver as part of this load.
    fn drive<F>(&self, connection: F)
    where
        F: std::future::Future + Send + 'static,
    {
        let handle = tokio::spawn(async move {
            let _ = connection.await;
        });
        if let Ok(mut d) = self.drivers.lock() {
            d.push(handle.abort_handle());
        }
    }

    fn close_all(&self) {
        if let Ok(mut d) = self.drivers.lock() {
            for h in d.drain(..) {
                h.abort();
            }
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.close_all();
    }
}

/// What the origin's TLS connections speak, once the first handshake told.
enum Alpn {
    Unknown,
    Http1,
    Http2(http2::SendRequest<EmptyBody>, SocketAddr),
}

/// A kept-alive HTTP/1.1 connection waiting for its next request.
struct Idle {
    sender: http1::SendRequest<EmptyBody>,
    remote: SocketAddr,
}

/// The connections of one origin within one page load.
struct Origin {
    https: bool,
    host: String,
    port: u16,
    /// The guarded addresses, resolved once per page load (so also never twice for one
    /// connection: a rebinding answer cannot slip in between check and connect).
    addrs: OnceCell<Result<Vec<SocketAddr>, MeasurementError>>,
    /// One permit per HTTP/1.1 connection in use.
    slots: Arc<Semaphore>,
    idle: Mutex<Vec<Idle>>,
    alpn: tokio::sync::Mutex<Alpn>,
}

/// A connection ready for one request.
enum Checkout {
    Http1 {
        sender: http1::SendRequest<EmptyBody>,
        remote: SocketAddr,
        _permit: OwnedSemaphorePermit,
    },
    Http2(http2::SendRequest<EmptyBody>),
}

/// An HTTP/1.1 connection over `io`, its I/O driven by the load; it holds `permit`
/// (one of the origin's connections) for as long as it lives.
async fn http1_over<S>(
    io: S,
    load: &Load,
    remote: SocketAddr,
    permit: OwnedSemaphorePermit,
) -> Result<Checkout, MeasurementError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| fail(ErrorKind::Http, format!("HTTP handshake failed: {e}")))?;
    load.drive(connection);
    Ok(Checkout::Http1 {
        sender,
        remote,
        _permit: permit,
    })
}

/// A freshly opened transport.
enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Origin {
    /// One request and its response on one of this origin's connections.
    async fn exchange(
        &self,
        load: &Load,
        url: &Url,
        expect: &Expectations,
        follow: bool,
        trace: &mut Trace,
    ) -> Result<Next, MeasurementError> {
        let probe = &mut trace.current;
        let mut request = request_for(url)?;
        match self.checkout(load, probe).await? {
            Checkout::Http2(mut sender) => {
                as_http2(&mut request, url)?;
                let sent = exchange(probe, "2", || sender.send_request(request)).await?;
                read_response(sent, expect, follow, probe).await
            }
            Checkout::Http1 {
                mut sender,
                remote,
                _permit,
            } => {
                let sent = exchange(probe, "1.1", || sender.send_request(request)).await?;
                let outcome = read_response(sent, expect, follow, probe).await;
                // The body was read to its end (a status or body mismatch is judged
                // after that), so the connection can carry the next request.
                let whole = match &outcome {
                    Ok(_) => true,
                    Err(e) => matches!(e.kind, ErrorKind::HttpStatus | ErrorKind::BodyMismatch),
                };
                if whole && !sender.is_closed() {
                    if let Ok(mut idle) = self.idle.lock() {
                        idle.push(Idle { sender, remote });
                    }
                }
                outcome
            }
        }
    }

    /// A connection for the next request: the origin's HTTP/2 connection, a kept-alive
    /// HTTP/1.1 one, or a new one within the per-origin limit. Time spent waiting for
    /// the limit is the probe's `queued` and not part of its phases.
    async fn checkout(&self, load: &Load, probe: &mut Probe) -> Result<Checkout, MeasurementError> {
        let asked = Instant::now();
        if self.https {
            let mut alpn = self.alpn.lock().await;
            match &*alpn {
                Alpn::Http2(sender, remote) => {
                    let sender = sender.clone();
                    let remote = *remote;
                    drop(alpn);
                    started(probe, asked);
                    reused(probe, remote);
                    return Ok(Checkout::Http2(sender));
                }
                Alpn::Http1 => {}
                Alpn::Unknown => {
                    // The first connection tells whether the origin speaks h2; the
                    // origin's other requests wait for it, as browsers do.
                    let permit = self.permit().await?;
                    started(probe, asked);
                    let checkout = self.open(load, probe, permit).await?;
                    *alpn = match &checkout {
                        Checkout::Http2(sender) => Alpn::Http2(
                            sender.clone(),
                            probe
                                .remote
                                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                        ),
                        Checkout::Http1 { .. } => Alpn::Http1,
                    };
                    return Ok(checkout);
                }
            }
        }
        let permit = self.permit().await?;
        started(probe, asked);
        loop {
            let candidate = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            let Some(Idle { mut sender, remote }) = candidate else {
                break;
            };
            let ready = tokio::time::timeout(REUSE_WAIT, sender.ready()).await;
            if matches!(ready, Ok(Ok(()))) {
                reused(probe, remote);
                return Ok(Checkout::Http1 {
                    sender,
                    remote,
                    _permit: permit,
                });
            }
            // The server closed it (or it is stuck): drop it and try the next.
        }
        self.open(load, probe, permit).await
    }

    async fn permit(&self) -> Result<OwnedSemaphorePermit, MeasurementError> {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| fail(ErrorKind::Http, "connection pool closed"))
    }

    /// Opens a new connection: the origin's guarded addresses, TCP, TLS with ALPN, and
    /// the HTTP handshake the ALPN answer calls for.
    async fn open(
        &self,
        load: &Load,
        probe: &mut Probe,
        permit: OwnedSemaphorePermit,
    ) -> Result<Checkout, MeasurementError> {
        probe.stage = Stage::Resolving;
        let addrs = self
            .addrs
            .get_or_init(|| load.engine.resolve(&self.host, self.port))
            .await
            .clone()?;
        probe.dns_done = Some(Instant::now());
        probe.stage = Stage::Connecting;
        let (stream, remote) = load.engine.connect(&addrs).await?;
        load.connections.fetch_add(1, Ordering::SeqCst);
        probe.connect_done = Some(Instant::now());
        probe.remote = Some(remote);
        probe.stage = Stage::Exchanging;
        let transport = if self.https {
            let tls = load.engine.tls_handshake(&self.host, stream).await?;
            probe.tls_done = Some(Instant::now());
            Transport::Tls(Box::new(tls))
        } else {
            probe.tls_done = probe.connect_done;
            Transport::Plain(stream)
        };
        match transport {
            Transport::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()) => {
                let (sender, connection) =
                    http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .map_err(|e| {
                            fail(ErrorKind::Http, format!("HTTP/2 handshake failed: {e}"))
                        })?;
                load.drive(connection);
                // HTTP/2 multiplexes: the per-origin connection limit does not apply.
                drop(permit);
                Ok(Checkout::Http2(sender))
            }
            Transport::Tls(tls) => http1_over(tls, load, remote, permit).await,
            Transport::Plain(tcp) => http1_over(tcp, load, remote, permit).await,
        }
    }
}

/// The request, which asked for a connection at `asked`, got its turn: the wait is
/// its `queued` time and its phases begin now.
fn started(probe: &mut Probe, asked: Instant) {
    probe.queued += asked.elapsed();
}

/// The request goes on a connection that is already open: no DNS, connect or TLS.
fn reused(probe: &mut Probe, remote: SocketAddr) {
    let now = Some(probe.began());
    probe.dns_done = now;
    probe.connect_done = now;
    probe.tls_done = now;
    probe.remote = Some(remote);
}

/// Sends a request on a pooled connection (whose driver runs elsewhere) with HTTP
/// `version`, timed.
async fn exchange<F, R>(
    probe: &mut Probe,
    version: &'static str,
    send: F,
) -> Result<Sent, MeasurementError>
where
    F: FnOnce() -> R,
    R: std::future::Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>>,
{
    probe.stage = Stage::Exchanging;
    probe.http_version = Some(version);
    let response = timed_send(probe, send).await?;
    Ok(Sent {
        response,
        driver: None,
    })
}

/// A sub-resource's URL as a page result lists it, bytes at most: a result goes to the
/// controller whole, under its body limit (256 KiB by default), and a page may list
/// 200 failed resources, so URLs of tens of kilobytes (a hostile page makes them; long
/// signed CDN URLs come close) would have had every such result refused, and the
/// volunteer unpaid.
const SHOWN_URL_BYTES: usize = 512;

/// A failed sub-resource's error message, bytes at most (it names the URL too).
const SHOWN_MESSAGE_BYTES: usize = 256;

/// `text`, cut to at most `max` bytes (at a character boundary, marked with `…`).
fn shown(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::tests::local_engine;
    use crate::measure::tests::site;
    use crate::measure::EngineConfig;
    use lastmile_testbed::shop;
    use lastmile_testbed::site::{SiteConfig, TargetSite, NOT_FOUND};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn within(ms: u64) -> Expectations {
        Expectations {
            timeout: Duration::from_millis(ms),
            ..Expectations::default()
        }
    }

    fn page_of(m: &Measurement) -> &PageSummary {
        m.page
            .as_ref()
            .unwrap_or_else(|| panic!("no page summary: {m:?}"))
    }

    #[tokio::test]
    async fn the_shop_page_is_loaded_with_every_sub_resource_counted() {
        let site = site(0).await;
        let url = format!("{}{}", site.origin(), shop::PAGE_PATH);
        let m = local_engine()
            .measure_page(&url, &within(10_000), PageLimits::default())
            .await;
        assert_eq!(m.error, None, "{m:?}");
        assert_eq!(m.status, Some(200));
        let page = page_of(&m);
        let (resources, bytes, missing) = shop::expected(NOT_FOUND.len());
        assert_eq!(page.resources, resources, "{page:?}");
        assert_eq!(page.bytes, bytes, "{page:?}");
        assert_eq!(page.bytes_decoded, bytes);
        assert_eq!(
            (m.bytes, m.bytes_decoded),
            (bytes, bytes),
            "a page's bytes are the page's"
        );
        assert_eq!(
            page.by_type,
            ResourceCounts {
                stylesheet: 1,
                script: 1,
                // The products, the stylesheet's background and the missing one.
                image: shop::PRODUCT_IMAGES as u32 + 2,
                font: 1,
                icon: 1,
                media: 0,
                other: 0,
            }
        );
        let failed: Vec<(String, Option<u16>, ErrorKind)> = page
            .failed
            .iter()
            .map(|f| (f.url.clone(), f.status, f.error.kind))
            .collect();
        assert_eq!(
            failed,
            vec![(
                format!("{}{missing}", site.origin()),
                Some(404),
                ErrorKind::HttpStatus
            )],
            "the missing image is listed and does not fail the page"
        );
        let slowest = page.slowest.as_ref().unwrap();
        assert!(slowest.timings_us.total > 0);
        // The page total covers the document and every sub-resource after it.
        assert_eq!(m.timings_us.total, page.total_us);
        assert!(page.total_us > page.document_timings_us.total, "{page:?}");
        assert_eq!(m.timings_us.ttfb, page.document_timings_us.ttfb);
        assert_eq!(page.document_url, url);
    }

    #[tokio::test]
    async fn http1_uses_at_most_six_kept_alive_connections_per_host() {
        // Server think time keeps requests overlapping, so the limit is what holds
        // the number of connections down.
        let site = site(40).await;
        let url = format!("{}{}", site.origin(), shop::PAGE_PATH);
        let m = local_engine()
            .measure_page(&url, &within(10_000), PageLimits::default())
            .await;
        assert_eq!(m.error, None, "{m:?}");
        let stats = site.connections();
        assert!(
            stats.max_open > 1,
            "sub-resources are fetched in parallel: {stats:?}"
        );
        assert!(
            stats.max_open <= MAX_CONNECTIONS_PER_HOST,
            "never more than six at once: {stats:?}"
        );
        // 17 requests went over at most six connections: they were kept alive and
        // reused, and the page says how many it opened.
        assert!(stats.accepted <= MAX_CONNECTIONS_PER_HOST, "{stats:?}");
        assert_eq!(page_of(&m).connections as usize, stats.accepted);
        assert_eq!(m.http_version.as_deref(), Some("1.1"));
        // A request that waited for a connection says so, apart from its phases.
        let slowest = page_of(&m).slowest.as_ref().unwrap();
        assert!(slowest.timings_us.ttfb >= 40_000, "{slowest:?}");
    }

    /// The shop over HTTPS from the test CA, HTTP/2 offered or not, and an engine that
    /// trusts the CA and reaches `shop.test` there.
    async fn tls_site(http2: bool) -> (TargetSite, Engine, tempfile::TempDir) {
        let ca = lastmile_testbed::tls::TestCa::new().unwrap();
        let config = SiteConfig {
            tls: Some(ca.server_config(&["shop.test"]).unwrap()),
            http2,
            think_time: Duration::from_millis(20),
            ..SiteConfig::default()
        };
        crate::measure::tests::https_site_for("shop.test", config, &ca, true).await
    }

    /// The shop's page measured over HTTPS (HTTP/2 offered or not), without error.
    async fn shop_over_tls(http2: bool) -> (TargetSite, Measurement, tempfile::TempDir) {
        let (site, engine, dir) = tls_site(http2).await;
        let m = engine
            .measure_page(
                "https://shop.test/page/",
                &within(10_000),
                PageLimits::default(),
            )
            .await;
        assert_eq!(m.error, None, "{m:?}");
        (site, m, dir)
    }

    #[tokio::test]
    async fn http2_carries_the_whole_page_on_one_connection() {
        let (site, m, _dir) = shop_over_tls(true).await;
        assert_eq!(m.http_version.as_deref(), Some("2"));
        let page = page_of(&m);
        let (resources, bytes, _) = shop::expected(NOT_FOUND.len());
        assert_eq!((page.resources, page.bytes), (resources, bytes));
        assert_eq!(page.failed.len(), 1);
        assert_eq!(
            site.connections().accepted,
            1,
            "one connection, multiplexed"
        );
        assert_eq!(page.connections, 1);
        assert!(page.document_timings_us.tls > 0);
        let slowest = page.slowest.as_ref().unwrap();
        assert_eq!(
            (slowest.timings_us.connect, slowest.timings_us.tls),
            (0, 0),
            "sub-resources ride the document's connection"
        );

        // Without h2 the same page goes over several HTTPS/1.1 connections.
        let (site, m, _dir) = shop_over_tls(false).await;
        assert_eq!(m.http_version.as_deref(), Some("1.1"));
        let stats = site.connections();
        assert!(
            stats.max_open > 1 && stats.max_open <= MAX_CONNECTIONS_PER_HOST,
            "{stats:?}"
        );
    }

    #[tokio::test]
    async fn each_page_limit_fails_the_page_with_its_own_error() {
        let site = site(0).await;
        let url = format!("{}{}", site.origin(), shop::PAGE_PATH);
        let kind = |m: &Measurement| m.error.as_ref().map(|e| e.kind);

        let m = local_engine()
            .measure_page(&url, &within(10_000), PageLimits { max_resources: 5 })
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::PageTooManyResources), "{m:?}");
        assert_eq!(
            page_of(&m).connections,
            1,
            "refused before any sub-resource is requested"
        );
        assert!(m.error.unwrap().message.contains("more than 5"));

        let expect = Expectations {
            max_bytes: shop::html().len() as u64 + 6_000,
            ..within(10_000)
        };
        let m = local_engine()
            .measure_page(&url, &expect, PageLimits::default())
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::PageTooLarge), "{m:?}");

        // The document alone takes 150 ms; its sub-resources do not fit in the rest.
        let slow = self::site(150).await;
        let slow_url = format!("{}{}", slow.origin(), shop::PAGE_PATH);
        let m = local_engine()
            .measure_page(&slow_url, &within(250), PageLimits::default())
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::TotalTimeout), "{m:?}");
        assert!(m.timings_us.total >= 250_000, "{m:?}");
        assert_eq!(m.status, Some(200), "the document itself arrived");

        // A document that fails fails the page, with the document's error.
        let m = local_engine()
            .measure_page(
                &format!("{}/no-such-page", site.origin()),
                &within(10_000),
                PageLimits::default(),
            )
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::HttpStatus), "{m:?}");
        assert_eq!(page_of(&m).resources, 0);
    }

    #[tokio::test]
    async fn a_sub_resource_on_a_forbidden_address_is_refused_and_listed() {
        // 127.0.0.2 stays forbidden; only the page's own address is allowed.
        let forbidden = TargetSite::start("127.0.0.2:0".parse().unwrap(), SiteConfig::default())
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let html = format!(
            "<html><body><img src=\"http://{}/page/img/product-1.png\">\
             <img src=\"http://rebind.test:{}/page/img/product-2.png\"></body></html>",
            forbidden.addr(),
            forbidden.addr().port()
        );
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let html = html.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        html.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(html.as_bytes()).await;
                });
            }
        });
        let engine = Engine::new(EngineConfig {
            allow_nets: vec!["127.0.0.1/32".parse().unwrap()],
            ..EngineConfig::default()
        })
        .unwrap()
        // A name that resolves to the forbidden address (DNS rebinding).
        .with_resolver(Arc::new(Rebinding));
        let m = engine
            .measure_page(
                &format!("http://{addr}/"),
                &within(5_000),
                PageLimits::default(),
            )
            .await;
        assert_eq!(m.error, None, "the page itself loads: {m:?}");
        let kinds: Vec<ErrorKind> = page_of(&m).failed.iter().map(|f| f.error.kind).collect();
        assert_eq!(
            kinds,
            vec![ErrorKind::TargetForbidden, ErrorKind::TargetForbidden],
            "{m:?}"
        );
        assert_eq!(
            forbidden.connections().accepted,
            0,
            "no connection reached the forbidden address"
        );
    }

    struct Rebinding;

    impl crate::measure::Resolve for Rebinding {
        fn resolve(&self, _host: &str) -> crate::measure::Resolution {
            Box::pin(async { Ok(vec!["127.0.0.2".parse().unwrap()]) })
        }
    }

    #[test]
    fn a_page_result_listing_every_failure_of_long_urls_fits_the_controllers_limit() {
        assert_eq!(shown("short", 10), "short");
        let cut = shown(&"é".repeat(400), SHOWN_URL_BYTES);
        assert!(cut.len() <= SHOWN_URL_BYTES && cut.ends_with('…'), "{cut}");
        // 200 failed images of 50 KB URLs, as a hostile page lists them: what the agent
        // sends stays under the controller's default body limit (256 KiB).
        let long = format!("https://site.example/{}", "a".repeat(50_000));
        let failed = FailedResource {
            url: shown(&long, SHOWN_URL_BYTES),
            kind: ResourceType::Image,
            status: Some(404),
            error: MeasurementError {
                kind: ErrorKind::HttpStatus,
                message: shown(&format!("status 404 at {long}"), SHOWN_MESSAGE_BYTES),
            },
        };
        let m = Measurement {
            page: Some(PageSummary {
                document_url: shown(&long, SHOWN_URL_BYTES),
                failed: vec![failed; PageLimits::default().max_resources as usize],
                ..Default::default()
            }),
            ..Default::default()
        };
        let size = serde_json::to_vec(&m).unwrap().len();
        assert!(size < 256 * 1024, "{size} bytes");
    }

    #[tokio::test]
    async fn downloads_in_flight_draw_on_one_page_budget() {
        // A page of 12 images of 1 MB each, sent 64 KiB every 20 ms, under a 2 MB
        // limit: six connections download at once. Each image had been allowed what
        // the page had left when it was found (all of it), so ~6 MB crossed the line
        // before the page failed, and the result counted only the finished ones. Now
        // the six draw on one budget, frame by frame, and the result says what came.
        use std::sync::atomic::AtomicU64;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let written = Arc::new(AtomicU64::new(0));
        let sent = written.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let sent = sent.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if request.starts_with("GET / ") {
                        let html: String = (0..12)
                            .map(|i| format!(r#"<img src="/i{i}.png">"#))
                            .collect();
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            html.len()
                        );
                        let _ = sock.write_all(format!("{head}{html}").as_bytes()).await;
                        return;
                    }
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: 1048576\r\nconnection: close\r\n\r\n";
                    if sock.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    for _ in 0..16 {
                        if sock.write_all(&[7u8; 65_536]).await.is_err() {
                            return;
                        }
                        sent.fetch_add(65_536, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                });
            }
        });
        let expect = Expectations {
            max_bytes: 2_000_000,
            ..within(20_000)
        };
        let m = local_engine()
            .measure_page(&format!("http://{addr}/"), &expect, PageLimits::default())
            .await;
        assert_eq!(
            m.error.as_ref().map(|e| e.kind),
            Some(ErrorKind::PageTooLarge),
            "{m:?}"
        );
        let written = written.load(Ordering::SeqCst);
        eprintln!(
            "server wrote {written} bytes; the result counts {}",
            m.bytes
        );
        assert!(
            written < 3_000_000,
            "the line carried {written} bytes for a 2 MB page"
        );
        assert!(m.bytes >= 2_000_000, "what came is counted: {m:?}");
        assert!(m.bytes + 1_000_000 >= written, "{} of {written}", m.bytes);
    }
}
