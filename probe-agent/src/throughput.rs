//! A throughput load: what the line sustains when it is full, and what its round trip
//! becomes meanwhile.
//!
//! A single fetch says little about a line's capacity: one TCP connection spends its
//! first round trips in slow start and can be held back by its own window, and a fixed
//! file is over in a blink on fibre and takes minutes on dial-up. So, as browser speed
//! tests do, the load is several connections downloading the check's URL again and
//! again for a fixed time (the task's [`ThroughputTask`]), and goodput is every body
//! byte over the time from the load's first body byte to its last (handshakes and the
//! first answer's wait are not the line's rate). Bodies are asked for with
//! `Accept-Encoding: identity` and counted as they come over the wire: nothing is
//! decoded, `body_contains` does not apply, and a redirect is not followed (its status
//! must pass the expectations like any other; with none named, a load's downloads must
//! be 2xx, since a redirect's few bytes fetched again and again are no line's goodput).
//!
//! The round trip is timed with `HEAD` requests (request sent to response head; once a
//! server refuses `HEAD` with 403, 405 or 501, a `GET` of the file's first byte, whose
//! `206` counts as `200`) on a connection of their own, kept alive so no handshake is
//! in it: first
//! [`IDLE_LATENCY_PROBES`] one after the other on the idle line, then one every
//! [`LATENCY_PROBE_INTERVAL_MS`] from the load's first body byte to its end (the next
//! at once when an answer took longer). The probes do not ride a load connection:
//! there they would wait behind that connection's own bytes (or, with HTTP/2, share
//! its flow-control window), which measures the connection, not the line. What the
//! loaded round trip adds to the idle one is the queue the load built up in the line
//! (bufferbloat): what a call or a game would suffer next to a download.
//!
//! Everything goes through the engine's own steps: the host is resolved once, every
//! address passes the target guard, and every connection (the probe's and the load's,
//! and a fresh one when a server does not keep its connections alive) goes only to a
//! guarded address, with TCP, TLS (HTTP/2 when ALPN agrees, still one TCP connection
//! per load connection) and error classification as an `http` check has them.
//!
//! The result's phases: `dns` is the one resolution, `connect`, `tls` and `ttfb` are
//! those of the load connection whose first response came first (the load's `status`
//! is that response's), `transfer` is the load's first to last body byte (the
//! summary's `duration_us`) and `total` runs from the start to the load's end. `bytes`
//! (and `bytes_decoded`, the same) count every connection's body bytes; a download
//! counts in `requests` once its response head arrived.
//!
//! The load ends when its duration has passed since it started, or once `max_bytes`
//! arrived over all connections together (not an error: the check asked for no more),
//! and bodies in flight are cut there (their bytes so far count). The task's time limit
//! still bounds the whole measurement (`total_timeout`, or the phase the probe
//! connection was in). Every task and connection of a measurement is its own and is
//! shut down before it returns: nothing is shared between measurements.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::Method;
use lastmile_protocol::{
    ErrorKind, Measurement, MeasurementError, ThroughputSummary, ThroughputTask, Timings,
    IDLE_LATENCY_PROBES, LATENCY_PROBE_INTERVAL_MS, MAX_LOADED_LATENCY_PROBES,
    MAX_THROUGHPUT_CONNECTIONS, MAX_THROUGHPUT_DURATION_MS,
};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use url::Url;

use crate::connection::{Conn, Dialer, First, Tasks};
use crate::measure::{
    fail, micros, parse_task_url, status_failure, Engine, Expectations, Stage, Target,
};

impl Engine {
    /// Loads the line with `load.connections` connections downloading `url` for
    /// `load.duration_ms` and times `HEAD` round trips before and during the load (see
    /// the module's doc). Every response's status must pass `expect.status` (when it
    /// is empty, the load's downloads must be 2xx: a redirect is not a file);
    /// `expect.max_bytes` ends the load early (not an error) and `expect.timeout`
    /// bounds the whole measurement. Never fails: a failure is a measurement with an
    /// error kind, the phases it reached and what the load measured until then.
    pub async fn measure_throughput(
        &self,
        url: &str,
        expect: &Expectations,
        load: ThroughputTask,
    ) -> Measurement {
        let mut run = Run::new(Instant::now(), load);
        let mut downloads = JoinSet::new();
        let outcome =
            tokio::time::timeout(expect.timeout, run.go(self, url, expect, &mut downloads)).await;
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(run.stage.timed_out(expect.timeout)),
        };
        run.ended.get_or_insert_with(Instant::now);
        // Every download and every connection of this measurement ends with it.
        downloads.shutdown().await;
        if let Some(tasks) = &run.tasks {
            tasks.shut_down().await;
        }
        run.into_measurement(error)
    }
}

/// The `p`th percentile (0 to 100, nearest rank) of `values`; `None` for no values.
pub fn percentile(values: &[u64], p: u32) -> Option<u64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = (p.min(100) as usize * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// Refuses a load the agent cannot carry out as asked.
fn check_load(load: ThroughputTask, timeout: Duration) -> Result<(), MeasurementError> {
    if !(1..=MAX_THROUGHPUT_CONNECTIONS).contains(&load.connections) {
        return Err(fail(
            ErrorKind::InvalidTask,
            format!(
                "a throughput load has 1 to {MAX_THROUGHPUT_CONNECTIONS} connections, not {}",
                load.connections
            ),
        ));
    }
    if !(1..=MAX_THROUGHPUT_DURATION_MS).contains(&load.duration_ms) {
        return Err(fail(
            ErrorKind::InvalidTask,
            format!(
                "a throughput load lasts 1 to {MAX_THROUGHPUT_DURATION_MS} ms, not {}",
                load.duration_ms
            ),
        ));
    }
    if Duration::from_millis(load.duration_ms) >= timeout {
        return Err(fail(
            ErrorKind::InvalidTask,
            format!(
                "the load's {} ms do not fit in the time limit of {} ms",
                load.duration_ms,
                timeout.as_millis()
            ),
        ));
    }
    Ok(())
}

/// One measurement as far as it got: what the result is made of, kept outside the
/// future the time limit may cut short.
struct Run {
    start: Instant,
    task: ThroughputTask,
    /// The probe connection's step, which names a timeout before the load.
    stage: Stage,
    dns_us: u64,
    tasks: Option<Tasks>,
    /// The probe connection and its first answer: the phases reported when the load
    /// got no answer.
    probe: Option<First>,
    idle: Vec<u64>,
    loaded: Vec<u64>,
    load: Option<Arc<Load>>,
    /// When the load ended (or the measurement, when it failed before).
    ended: Option<Instant>,
}

impl Run {
    fn new(start: Instant, task: ThroughputTask) -> Run {
        Run {
            start,
            task,
            stage: Stage::Starting,
            dns_us: 0,
            tasks: None,
            probe: None,
            idle: Vec::new(),
            loaded: Vec::new(),
            load: None,
            ended: None,
        }
    }

    /// Resolve and guard, idle probes, then the load with its probes.
    async fn go(
        &mut self,
        engine: &Engine,
        url: &str,
        expect: &Expectations,
        downloads: &mut JoinSet<Result<(), MeasurementError>>,
    ) -> Result<(), MeasurementError> {
        let url = parse_task_url(url)?;
        let Target { https, host, port } = Target::of(&url)?;
        check_load(self.task, expect.timeout)?;

        self.stage = Stage::Resolving;
        let resolving = Instant::now();
        let addrs = engine.resolve(&host, port).await?;
        self.dns_us = micros(resolving.elapsed());
        let tasks = Tasks::default();
        self.tasks = Some(tasks.clone());
        let dialer = Arc::new(Dialer {
            engine: engine.clone(),
            https,
            host,
            addrs,
            tasks,
        });

        self.stage = Stage::Connecting;
        let conn = dialer.open().await?;
        self.stage = Stage::Exchanging;
        let mut first = conn.first(None, 0);
        self.probe = Some(first);
        let mut line = ProbeLine {
            conn,
            dialer: dialer.clone(),
            url: url.clone(),
            ranged: false,
        };
        for _ in 0..IDLE_LATENCY_PROBES {
            let (status, rtt) = line.head().await?;
            if first.status.is_none() {
                first.status = Some(status);
                first.ttfb_us = rtt;
                self.probe = Some(first);
            }
            if let Some(e) = status_failure(status, expect) {
                return Err(e);
            }
            self.idle.push(rtt);
        }

        let started = Instant::now();
        let load = Arc::new(Load {
            dialer,
            url,
            expect: expect.clone(),
            connections: self.task.connections,
            started,
            deadline: started + Duration::from_millis(self.task.duration_ms),
            bytes: AtomicU64::new(0),
            requests: AtomicU32::new(0),
            first_byte_us: AtomicU64::new(u64::MAX),
            last_byte_us: AtomicU64::new(0),
            connected: AtomicU32::new(0),
            empty_bodies: AtomicU32::new(0),
            first: OnceLock::new(),
            flowing: Notify::new(),
            full: Notify::new(),
        });
        self.load = Some(load.clone());
        for _ in 0..load.connections {
            downloads.spawn(download(load.clone()));
        }
        let outcome = tokio::select! {
            () = tokio::time::sleep_until(load.deadline.into()) => Ok(()),
            () = load.full.notified() => Ok(()),
            outcome = downloads_end(downloads) => outcome,
            outcome = probe_under_load(&mut line, &load, expect, &mut self.loaded) => outcome,
        };
        self.ended = Some(Instant::now());
        outcome?;
        match load.nothing_arrived() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn into_measurement(self, error: Option<MeasurementError>) -> Measurement {
        let load = self.load.as_deref();
        let first = load.and_then(|l| l.first.get().copied()).or(self.probe);
        let (bytes, requests) = load.map_or((0, 0), |l| {
            (
                l.bytes.load(Ordering::SeqCst),
                l.requests.load(Ordering::SeqCst),
            )
        });
        let span = load.and_then(Load::span);
        let duration_us = span.map_or(0, |(from, to)| micros(to.saturating_duration_since(from)));
        let ended = self.ended.unwrap_or_else(Instant::now);
        let end = span.map_or(ended, |(_, last)| last.max(ended));
        let ttfb = first.map_or(0, |f| f.ttfb_us);
        let timings = Timings {
            dns: self.dns_us,
            connect: first.map_or(0, |f| f.connect_us),
            tls: first.map_or(0, |f| f.tls_us),
            ttfb,
            transfer: duration_us,
            // Start to the load's end. The first answer's wait and the transfer may
            // overlap (another connection's bytes can come first), so the sum is no
            // bound by itself; the total always covers both (the controller refuses
            // a ttfb or transfer longer than the total).
            total: micros(end.saturating_duration_since(self.start)).max(ttfb + duration_us),
        };
        Measurement {
            status: first.and_then(|f| f.status),
            bytes,
            error,
            timings_us: timings,
            bytes_decoded: bytes,
            remote_addr: first.map(|f| f.remote.ip().to_string()),
            ip_version: first.map(|f| if f.remote.is_ipv4() { 4 } else { 6 }),
            http_version: first.map(|f| f.http_version.to_owned()),
            throughput: Some(ThroughputSummary {
                connections: load.map_or(0, |l| l.connections),
                requests,
                bytes,
                duration_us,
                idle_latency_us: self.idle,
                loaded_latency_us: self.loaded,
            }),
            ..Measurement::default()
        }
    }
}

/// The load's tally, written by every download as its bytes arrive.
struct Load {
    dialer: Arc<Dialer>,
    url: Url,
    expect: Expectations,
    connections: u32,
    started: Instant,
    deadline: Instant,
    bytes: AtomicU64,
    /// Responses whose head arrived (their bodies read to the end or cut).
    requests: AtomicU32,
    /// µs from `started` to the first body byte (`u64::MAX`: none yet) and the last.
    first_byte_us: AtomicU64,
    last_byte_us: AtomicU64,
    /// Load connections that got through their handshakes.
    connected: AtomicU32,
    /// Bodies that ended without a byte.
    empty_bodies: AtomicU32,
    /// The load's first response: its connection's phases are the measurement's.
    first: OnceLock<First>,
    /// Told at the first body byte: the line is loaded, probing begins.
    flowing: Notify,
    /// Told once `max_bytes` arrived: the load ends.
    full: Notify,
}

impl Load {
    /// Counts `n` body bytes that just arrived; whether the load now has its
    /// `max_bytes`.
    fn arrived(&self, n: u64) -> bool {
        let at = micros(self.started.elapsed());
        if self.first_byte_us.fetch_min(at, Ordering::SeqCst) == u64::MAX {
            self.flowing.notify_one();
        }
        self.last_byte_us.fetch_max(at, Ordering::SeqCst);
        let total = self.bytes.fetch_add(n, Ordering::SeqCst) + n;
        if total >= self.expect.max_bytes {
            self.full.notify_one();
            return true;
        }
        false
    }

    /// When the first and the last body byte arrived, if any did.
    fn span(&self) -> Option<(Instant, Instant)> {
        let first = self.first_byte_us.load(Ordering::SeqCst);
        let last = self.last_byte_us.load(Ordering::SeqCst);
        (first != u64::MAX).then(|| {
            (
                self.started + Duration::from_micros(first),
                self.started + Duration::from_micros(last),
            )
        })
    }

    /// Why a load that got no body byte at all measured nothing.
    fn nothing_arrived(&self) -> Option<MeasurementError> {
        if self.bytes.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let ms = self
            .deadline
            .saturating_duration_since(self.started)
            .as_millis();
        Some(if self.empty_bodies.load(Ordering::SeqCst) > 0 {
            fail(
                ErrorKind::Http,
                "the load's responses have empty bodies: there is nothing to download",
            )
        } else if self.connected.load(Ordering::SeqCst) == 0 {
            fail(
                ErrorKind::ConnectTimeout,
                format!("no load connection was established within the {ms} ms load"),
            )
        } else {
            fail(
                ErrorKind::TotalTimeout,
                format!("no body byte arrived within the {ms} ms load"),
            )
        })
    }
}

/// One load connection: `GET` the URL and read the body, then again on the same
/// connection, until the load ends (which aborts this task), `max_bytes` arrived or a
/// body is empty (a loop of empty bodies would measure nothing, as fast as it can).
async fn download(load: Arc<Load>) -> Result<(), MeasurementError> {
    let mut conn = load.dialer.open().await?;
    load.connected.fetch_add(1, Ordering::SeqCst);
    while Instant::now() < load.deadline {
        if !conn.ready().await {
            // The server closed it after the last body (no keep-alive): the next
            // download goes on a fresh connection, to the same guarded addresses.
            conn = load.dialer.open().await?;
        }
        let request = conn.request(&load.url, Method::GET)?;
        let (response, ttfb_us) = conn.exchange(request).await?;
        let status = response.status().as_u16();
        load.requests.fetch_add(1, Ordering::SeqCst);
        let _ = load.first.set(conn.first(Some(status), ttfb_us));
        if let Some(e) = status_failure(status, &load.expect) {
            return Err(e);
        }
        if load.expect.status.is_empty() && !(200..300).contains(&status) {
            // A redirect is not followed, so its few bytes, downloaded again and again
            // for the whole load, would be reported as the line's goodput.
            return Err(fail(
                ErrorKind::HttpStatus,
                format!(
                    "a download of the load answered {status}: a load needs a 2xx body \
                     (a redirect is not followed; point the check at the file itself)"
                ),
            ));
        }
        let mut body = response.into_body();
        let mut got = 0;
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| fail(ErrorKind::Http, format!("a download broke off: {e}")))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            got += data.len();
            if load.arrived(data.len() as u64) {
                return Ok(());
            }
        }
        if got == 0 {
            load.empty_bodies.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
    }
    Ok(())
}

/// Waits for every download to stop by itself (empty bodies, `max_bytes`); the first
/// that fails fails the load.
async fn downloads_end(
    downloads: &mut JoinSet<Result<(), MeasurementError>>,
) -> Result<(), MeasurementError> {
    while let Some(joined) = downloads.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(fail(ErrorKind::Http, format!("a download stopped: {e}"))),
        }
    }
    Ok(())
}

/// From the load's first body byte, a probe every interval (or at once after one that
/// took longer), each round trip added to `out`; it runs until the load's end drops
/// it, so a probe in flight then is not listed.
async fn probe_under_load(
    line: &mut ProbeLine,
    load: &Load,
    expect: &Expectations,
    out: &mut Vec<u64>,
) -> Result<(), MeasurementError> {
    // Before its first byte the line is not loaded yet (the load's handshakes).
    load.flowing.notified().await;
    let interval = Duration::from_millis(LATENCY_PROBE_INTERVAL_MS);
    let mut next = Instant::now();
    while out.len() < MAX_LOADED_LATENCY_PROBES {
        tokio::time::sleep_until(next.into()).await;
        let sent = Instant::now();
        let (status, rtt) = line.head().await?;
        if let Some(e) = status_failure(status, expect) {
            return Err(e);
        }
        out.push(rtt);
        next = (sent + interval).max(Instant::now());
    }
    // As many as the longest load holds; the rest of this one goes unprobed.
    std::future::pending().await
}

/// The probe connection.
struct ProbeLine {
    conn: Conn,
    dialer: Arc<Dialer>,
    url: Url,
    /// The server refused `HEAD`: probes ask for the file's first byte instead.
    ranged: bool,
}

/// What a server that will not answer `HEAD` answers it with: method not allowed, not
/// implemented, or (object stores' URLs signed for `GET`) forbidden.
const HEAD_REFUSED: [u16; 3] = [403, 405, 501];

/// Body bytes a ranged probe reads at most: its one byte, or the start of a body a
/// server sent whole (then the connection is dropped rather than drained).
const RANGED_PROBE_BYTES: usize = 64 * 1024;

impl ProbeLine {
    /// One probe of the URL: its status and round trip (request sent to response
    /// head), µs. A `HEAD`, or, once the server refused one, a `GET` of the file's
    /// first byte (`Range: bytes=0-0`), whose `206` counts as the file's `200`.
    async fn head(&mut self) -> Result<(u16, u64), MeasurementError> {
        if !self.ranged {
            let (status, rtt) = self.once(Method::HEAD).await?;
            if !HEAD_REFUSED.contains(&status) {
                return Ok((status, rtt));
            }
            self.ranged = true;
        }
        self.once(Method::GET).await
    }

    async fn once(&mut self, method: Method) -> Result<(u16, u64), MeasurementError> {
        if !self.conn.ready().await {
            // Closed by the server: a fresh connection, its handshakes outside the
            // round trip.
            self.conn = self.dialer.open().await?;
        }
        let mut request = self.conn.request(&self.url, method.clone())?;
        if method == Method::GET {
            request.headers_mut().insert(
                hyper::header::RANGE,
                hyper::header::HeaderValue::from_static("bytes=0-0"),
            );
        }
        let (response, rtt) = self.conn.exchange(request).await?;
        let status = response.status().as_u16();
        if method == Method::HEAD {
            return Ok((status, rtt));
        }
        // Read the byte (the connection is used again); a body longer than a probe's is
        // the whole file of a server that ignores ranges: not read on, and dropped with
        // it its HTTP/1 connection (the next probe dials anew, outside its round trip)
        // or its HTTP/2 stream.
        let mut body = response.into_body();
        let mut got = 0usize;
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| fail(ErrorKind::Http, format!("a probe broke off: {e}")))?;
            got += frame.data_ref().map_or(0, |d| d.len());
            if got > RANGED_PROBE_BYTES {
                break;
            }
        }
        Ok((if status == 206 { 200 } else { status }, rtt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::tests::local_engine;
    use crate::measure::EngineConfig;
    use bytes::Bytes;
    use http_body_util::combinators::BoxBody;
    use http_body_util::{Empty, Full, StreamBody};
    use hyper::body::Frame;
    use hyper::body::Incoming;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use std::future::Future;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;
    use tokio::net::TcpListener;
    use tokio::sync::watch;

    const MIB: usize = 1024 * 1024;

    /// What the test server's `GET` answers with.
    #[derive(Clone, Copy)]
    enum Serve {
        /// A body of this many bytes (`Content-Length`).
        Fixed(usize),
        /// A chunked body that never ends: `chunk` bytes every `gap`.
        Endless { chunk: usize, gap: Duration },
        /// A `302` to `/file` with a short body.
        Redirect,
        /// `HEAD` refused (`405`); a `GET` with `Range: bytes=0-0` answered `206` with
        /// one byte, any other `GET` with a body of this many bytes.
        NoHead(usize),
    }

    /// A keep-alive HTTP server (HTTP/1.1, or HTTP/2 by ALPN over `tls`) answering
    /// `HEAD` with an empty 200 and `GET` as `serve` says, each after `think`; it
    /// counts the connections it accepted and those open now.
    struct Server {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        open: watch::Receiver<usize>,
    }

    impl Server {
        async fn start(
            ip: &str,
            serve: Serve,
            think: Duration,
            tls: Option<Arc<rustls::ServerConfig>>,
        ) -> Server {
            let listener = TcpListener::bind((ip, 0)).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accepted = Arc::new(AtomicUsize::new(0));
            let (open_tx, open) = watch::channel(0usize);
            let open_tx = Arc::new(open_tx);
            let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
            let counted = accepted.clone();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    counted.fetch_add(1, Ordering::SeqCst);
                    open_tx.send_modify(|n| *n += 1);
                    let (open_tx, acceptor) = (open_tx.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        let _ = tcp.set_nodelay(true);
                        match acceptor {
                            None => serve_http1(tcp, serve, think).await,
                            Some(acceptor) => {
                                if let Ok(tls) = acceptor.accept(tcp).await {
                                    if tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()) {
                                        let _ = hyper::server::conn::http2::Builder::new(
                                            hyper_util::rt::TokioExecutor::new(),
                                        )
                                        .serve_connection(TokioIo::new(tls), service(serve, think))
                                        .await;
                                    } else {
                                        serve_http1(tls, serve, think).await;
                                    }
                                }
                            }
                        }
                        open_tx.send_modify(|n| *n -= 1);
                    });
                }
            });
            Server {
                addr,
                accepted,
                open,
            }
        }

        fn url(&self) -> String {
            format!("http://{}/", self.addr)
        }

        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }

        /// Waits (at most 10 s) until every connection it accepted was closed.
        async fn all_closed(&mut self) -> bool {
            tokio::time::timeout(Duration::from_secs(10), self.open.wait_for(|n| *n == 0))
                .await
                .is_ok_and(|r| r.is_ok())
        }
    }

    async fn serve_http1<S>(io: S, serve: Serve, think: Duration)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), service(serve, think))
            .await;
    }

    type TestBody = BoxBody<Bytes, Infallible>;

    fn service(
        serve: Serve,
        think: Duration,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<TestBody>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<TestBody>, Infallible>> + Send,
    > + Clone {
        hyper::service::service_fn(move |request: Request<Incoming>| async move {
            tokio::time::sleep(think).await;
            if let Serve::NoHead(n) = serve {
                let ranged = request.headers().contains_key(hyper::header::RANGE);
                let (status, body) = match (request.method() == Method::HEAD, ranged) {
                    (true, _) => (405, Empty::new().boxed()),
                    (false, true) => (206, Full::new(Bytes::from_static(b"x")).boxed()),
                    (false, false) => (200, Full::new(Bytes::from(vec![b'x'; n])).boxed()),
                };
                let mut response = Response::new(body);
                *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                return Ok::<_, Infallible>(response);
            }
            let body = if request.method() == Method::HEAD {
                Empty::new().boxed()
            } else {
                match serve {
                    Serve::NoHead(_) => unreachable!("answered above"),
                    Serve::Redirect => {
                        let mut moved =
                            Response::new(Full::new(Bytes::from_static(b"moved")).boxed());
                        *moved.status_mut() = hyper::StatusCode::FOUND;
                        moved
                            .headers_mut()
                            .insert(hyper::header::LOCATION, "/file".parse().unwrap());
                        return Ok::<_, Infallible>(moved);
                    }
                    Serve::Fixed(n) => Full::new(Bytes::from(vec![b'x'; n])).boxed(),
                    Serve::Endless { chunk, gap } => {
                        let piece = Bytes::from(vec![b'y'; chunk]);
                        let pieces = futures_util::stream::unfold(piece, move |piece| async move {
                            tokio::time::sleep(gap).await;
                            Some((Ok::<_, Infallible>(Frame::data(piece.clone())), piece))
                        });
                        StreamBody::new(pieces).boxed()
                    }
                }
            };
            Ok::<_, Infallible>(Response::new(body))
        })
    }

    fn within(ms: u64) -> Expectations {
        Expectations {
            timeout: Duration::from_millis(ms),
            max_bytes: 100 * 1024 * 1024 * 1024,
            ..Expectations::default()
        }
    }

    fn load(connections: u32, duration_ms: u64) -> ThroughputTask {
        ThroughputTask {
            connections,
            duration_ms,
        }
    }

    fn summary(m: &Measurement) -> &ThroughputSummary {
        m.throughput
            .as_ref()
            .unwrap_or_else(|| panic!("no throughput summary: {m:?}"))
    }

    fn kind(m: &Measurement) -> Option<ErrorKind> {
        m.error.as_ref().map(|e| e.kind)
    }

    #[tokio::test]
    async fn four_connections_for_a_second_count_every_body_byte_and_probe_the_line() {
        let mut server = Server::start("127.0.0.1", Serve::Fixed(MIB), Duration::ZERO, None).await;
        let m = local_engine()
            .measure_throughput(&server.url(), &within(20_000), load(4, 1_000))
            .await;
        assert_eq!(m.error, None, "{m:?}");
        assert_eq!(m.status, Some(200));
        assert_eq!(m.http_version.as_deref(), Some("1.1"));
        assert_eq!(
            (m.remote_addr.as_deref(), m.ip_version),
            (Some("127.0.0.1"), Some(4))
        );
        let s = summary(&m);
        assert_eq!(s.connections, 4);
        assert!(s.requests >= 4, "{s:?}");
        assert_eq!((m.bytes, m.bytes_decoded), (s.bytes, s.bytes));
        // Whole bodies, and at most one cut short per connection at the load's end.
        let mib = MIB as u64;
        let requests = u64::from(s.requests);
        assert!(s.bytes <= requests * mib, "{s:?}");
        assert!(s.bytes >= requests.saturating_sub(4) * mib, "{s:?}");
        let t = m.timings_us;
        assert_eq!(t.transfer, s.duration_us);
        assert!(
            s.duration_us > 0 && s.duration_us <= 1_000_000 + 500_000,
            "{s:?}"
        );
        assert_eq!(s.idle_latency_us.len(), IDLE_LATENCY_PROBES);
        assert!(s.idle_latency_us.iter().all(|&rtt| rtt > 0), "{s:?}");
        assert!(
            !s.loaded_latency_us.is_empty() && s.loaded_latency_us.len() <= 11,
            "one probe per 100 ms of the load: {s:?}"
        );
        assert!(t.total >= t.ttfb + t.transfer, "{t:?}");
        for phase in [t.dns, t.connect, t.tls, t.ttfb, t.transfer] {
            assert!(phase <= t.total, "{t:?}");
        }
        assert!(t.connect > 0 && t.ttfb > 0, "{t:?}");
        // Kept alive: the probe connection and one per download, reused throughout.
        assert_eq!(server.accepted(), 5);
        assert!(
            server.all_closed().await,
            "every connection ends with the measurement"
        );
    }

    #[tokio::test]
    async fn over_http2_each_load_connection_is_a_tcp_connection_of_its_own() {
        let ca = lastmile_testbed::tls::TestCa::new().unwrap();
        let mut tls = (*ca.server_config(&["speed.test"]).unwrap()).clone();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut server = Server::start(
            "127.0.0.1",
            Serve::Fixed(256 * 1024),
            Duration::ZERO,
            Some(Arc::new(tls)),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let ca_file = ca.cert_file(dir.path()).unwrap();
        let engine =
            crate::measure::tests::engine_reaching("speed.test:443", server.addr, Some(ca_file));
        let m = engine
            .measure_throughput("https://speed.test/", &within(20_000), load(3, 500))
            .await;
        assert_eq!(m.error, None, "{m:?}");
        assert_eq!(m.http_version.as_deref(), Some("2"));
        assert!(m.timings_us.tls > 0, "{m:?}");
        let s = summary(&m);
        assert!(s.requests >= 3 && s.bytes > 0, "{s:?}");
        assert_eq!(s.idle_latency_us.len(), IDLE_LATENCY_PROBES);
        assert_eq!(
            server.accepted(),
            4,
            "the probe's and one per load connection"
        );
        assert!(server.all_closed().await);
    }

    /// An endless body: 16 KiB every `gap_ms`, on every connection.
    async fn endless(gap_ms: u64) -> Server {
        let serve = Serve::Endless {
            chunk: 16 * 1024,
            gap: Duration::from_millis(gap_ms),
        };
        Server::start("127.0.0.1", serve, Duration::ZERO, None).await
    }

    #[tokio::test]
    async fn the_load_stops_once_max_bytes_arrived_and_that_is_no_error() {
        let mut server = endless(2).await;
        let max_bytes = 2_000_000;
        let expect = Expectations {
            max_bytes,
            ..within(60_000)
        };
        let m = local_engine()
            .measure_throughput(&server.url(), &expect, load(4, 30_000))
            .await;
        assert_eq!(m.error, None, "{m:?}");
        let s = summary(&m);
        // The frame that crossed the limit counts, and one more at most per connection
        // that was reading at the same moment.
        assert!(s.bytes >= max_bytes, "{s:?}");
        assert!(s.bytes <= max_bytes + 4 * 64 * 1024, "{s:?}");
        assert_eq!(
            s.requests, 4,
            "each connection's one endless body, cut: {s:?}"
        );
        assert!(
            m.timings_us.total < 15_000_000,
            "ended long before its 30 s: {m:?}"
        );
        assert!(
            server.all_closed().await,
            "the cut bodies' connections are closed"
        );
    }

    #[tokio::test]
    async fn the_load_stops_at_its_duration_and_cuts_the_bodies_in_flight() {
        let mut server = endless(5).await;
        let m = local_engine()
            .measure_throughput(&server.url(), &within(10_000), load(4, 700))
            .await;
        assert_eq!(m.error, None, "{m:?}");
        let s = summary(&m);
        assert_eq!(s.requests, 4, "{s:?}");
        assert!(s.bytes > 0, "{s:?}");
        assert!(s.duration_us <= 700_000 + 300_000, "{s:?}");
        assert!(m.timings_us.total < 10_000_000, "{m:?}");
        assert_eq!(server.accepted(), 5);
        assert!(
            server.all_closed().await,
            "the cut bodies' connections are closed"
        );
    }

    #[tokio::test]
    async fn a_measurement_past_its_time_limit_is_a_total_timeout_with_what_it_measured() {
        // Five idle probes at 150 ms each, then a 500 ms load: past the 1 s limit.
        let mut server = Server::start(
            "127.0.0.1",
            Serve::Fixed(64 * 1024),
            Duration::from_millis(150),
            None,
        )
        .await;
        let m = local_engine()
            .measure_throughput(&server.url(), &within(1_000), load(2, 500))
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::TotalTimeout), "{m:?}");
        assert!(m.timings_us.total >= 1_000_000, "{m:?}");
        assert_eq!(summary(&m).idle_latency_us.len(), IDLE_LATENCY_PROBES);
        assert_eq!(m.status, Some(200));
        assert!(server.all_closed().await);
    }

    #[tokio::test]
    async fn a_url_without_a_body_to_download_fails_the_load() {
        let server = Server::start("127.0.0.1", Serve::Fixed(0), Duration::ZERO, None).await;
        let m = local_engine()
            .measure_throughput(&server.url(), &within(20_000), load(2, 10_000))
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::Http), "{m:?}");
        assert!(m.error.unwrap().message.contains("empty"));
        assert_eq!(m.status, Some(200));
        assert!(
            m.timings_us.total < 10_000_000,
            "it stops when every download stopped"
        );
    }

    #[tokio::test]
    async fn a_status_the_check_does_not_expect_fails_it_as_measure_does() {
        let server = Server::start("127.0.0.1", Serve::Fixed(1_000), Duration::ZERO, None).await;
        let expect = Expectations {
            status: vec![204],
            ..within(10_000)
        };
        let m = local_engine()
            .measure_throughput(&server.url(), &expect, load(2, 500))
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::HttpStatus), "{m:?}");
        assert_eq!(m.status, Some(200));
        assert!(m.error.unwrap().message.contains("expected 204"));
    }

    #[tokio::test]
    async fn a_server_refusing_head_is_probed_with_a_one_byte_range() {
        // Object stores' signed URLs and some servers answer HEAD with 403 or 405: the
        // load had failed on its first probe. The probes now ask for the first byte.
        let server =
            Server::start("127.0.0.1", Serve::NoHead(64 * 1024), Duration::ZERO, None).await;
        let m = local_engine()
            .measure_throughput(&server.url(), &within(10_000), load(2, 500))
            .await;
        assert_eq!(m.error, None, "{m:?}");
        let s = summary(&m);
        assert_eq!(s.idle_latency_us.len(), IDLE_LATENCY_PROBES, "{s:?}");
        assert!(!s.loaded_latency_us.is_empty(), "{s:?}");
        assert_eq!(m.status, Some(200), "the load's own answers");
        assert!(
            s.bytes >= 64 * 1024,
            "the probes' bytes are not the load's: {s:?}"
        );
    }

    #[tokio::test]
    async fn a_load_of_a_redirect_fails_instead_of_measuring_the_redirect() {
        // Redirects are not followed in a load: its 5-byte 302 body had been downloaded
        // again and again for the whole duration and reported as the line's goodput.
        let server = Server::start("127.0.0.1", Serve::Redirect, Duration::ZERO, None).await;
        let m = local_engine()
            .measure_throughput(&server.url(), &within(10_000), load(2, 500))
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::HttpStatus), "{m:?}");
        assert_eq!(m.status, Some(302));
        assert!(m.error.unwrap().message.contains("needs a 2xx body"));
    }

    #[tokio::test]
    async fn a_load_the_agent_cannot_carry_out_is_an_invalid_task_before_any_connection() {
        let server = Server::start("127.0.0.1", Serve::Fixed(1_000), Duration::ZERO, None).await;
        for (task, timeout_ms) in [
            (load(0, 1_000), 10_000),
            (load(MAX_THROUGHPUT_CONNECTIONS + 1, 1_000), 10_000),
            (load(4, MAX_THROUGHPUT_DURATION_MS + 1), 60_000),
            (load(4, 10_000), 10_000),
        ] {
            let m = local_engine()
                .measure_throughput(&server.url(), &within(timeout_ms), task)
                .await;
            assert_eq!(kind(&m), Some(ErrorKind::InvalidTask), "{task:?}: {m:?}");
        }
        assert_eq!(server.accepted(), 0);
    }

    #[tokio::test]
    async fn a_forbidden_target_is_refused_before_any_connection() {
        let server = Server::start("127.0.0.1", Serve::Fixed(1_000), Duration::ZERO, None).await;
        let m = Engine::new(EngineConfig::default())
            .unwrap()
            .measure_throughput(&server.url(), &within(10_000), load(4, 1_000))
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::TargetForbidden), "{m:?}");
        assert_eq!(m.status, None);
        // And by a name that resolves to it (DNS rebinding).
        let m = Engine::new(EngineConfig::default())
            .unwrap()
            .with_resolver(Arc::new(Loopback))
            .measure_throughput(
                &format!("http://rebind.test:{}/", server.addr.port()),
                &within(10_000),
                load(4, 1_000),
            )
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::TargetForbidden), "{m:?}");
        assert_eq!(server.accepted(), 0, "no connection reached it");
    }

    #[tokio::test]
    async fn a_server_that_closes_after_each_answer_gets_fresh_connections() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // One answer per connection, then `Connection: close`, as servers without
        // keep-alive do; HEAD gets the head alone.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    let body = vec![b'z'; 256 * 1024];
                    let mut answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    if !buf[..n].starts_with(b"HEAD") {
                        answer.extend_from_slice(&body);
                    }
                    let _ = sock.write_all(&answer).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        let m = local_engine()
            .measure_throughput(&format!("http://{addr}/"), &within(10_000), load(2, 300))
            .await;
        assert_eq!(m.error, None, "{m:?}");
        let s = summary(&m);
        assert_eq!(s.connections, 2, "two at once, however many in turn: {s:?}");
        assert_eq!(s.idle_latency_us.len(), IDLE_LATENCY_PROBES);
        let requests = usize::try_from(s.requests).unwrap();
        assert!(requests >= 2, "{s:?}");
        // A connection per probe and per download (a download the load's end cut may
        // have had its connection open but no answer yet).
        let total = accepted.load(Ordering::SeqCst);
        let probes = IDLE_LATENCY_PROBES + s.loaded_latency_us.len();
        assert!(total >= probes + requests, "{total} connections: {s:?}");
    }

    struct Loopback;

    impl crate::measure::Resolve for Loopback {
        fn resolve(&self, _host: &str) -> crate::measure::Resolution {
            Box::pin(async { Ok(vec!["127.0.0.1".parse().unwrap()]) })
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v = [50, 10, 40, 20, 30];
        assert_eq!(percentile(&v, 50), Some(30));
        assert_eq!(percentile(&v, 90), Some(50));
        assert_eq!(percentile(&v, 0), Some(10));
        assert_eq!(percentile(&[7, 3, 5, 1], 50), Some(3));
        assert_eq!(percentile(&[], 50), None);
    }

    #[tokio::test]
    async fn behind_a_slow_link_goodput_is_the_links_rate_and_its_queue_shows_under_load() {
        use lastmile_testbed::link::{Link, LinkProfile};
        let server = Server::start("127.0.0.1", Serve::Fixed(MIB), Duration::ZERO, None).await;
        let profile = LinkProfile {
            down_bps: 8_000_000,
            up_bps: 2_000_000,
            rtt: Duration::from_millis(40),
        };
        let link = Link::start("127.0.0.1:0".parse().unwrap(), server.addr, profile)
            .await
            .unwrap();
        let m = local_engine()
            .measure_throughput(
                &format!("http://{}/", link.addr()),
                &within(30_000),
                load(4, 3_000),
            )
            .await;
        assert_eq!(m.error, None, "{m:?}");
        let s = summary(&m);
        let mbps = s.bytes as f64 * 8.0 / s.duration_us as f64;
        let idle = percentile(&s.idle_latency_us, 50).unwrap();
        let loaded = percentile(&s.loaded_latency_us, 50).unwrap();
        eprintln!(
            "8 Mbit/s, 40 ms link: goodput {mbps:.2} Mbit/s, idle latency median {:.1} ms, \
             loaded {:.1} ms (p90 {:.1} ms, {} probes)",
            idle as f64 / 1000.0,
            loaded as f64 / 1000.0,
            percentile(&s.loaded_latency_us, 90).unwrap() as f64 / 1000.0,
            s.loaded_latency_us.len()
        );
        let rate = profile.down_bps as f64 / 1e6;
        assert!(
            mbps > rate * 0.5 && mbps < rate * 1.5,
            "{mbps} Mbit/s: {s:?}"
        );
        assert!(idle >= 40_000, "the link's round trip: {s:?}");
        assert!(loaded > idle + 20_000, "{s:?}");
    }
}
