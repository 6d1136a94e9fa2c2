//! The measurement engine: one HTTP fetch, each phase timed where it happens.
//!
//! reqwest cannot tell TCP connect from TLS handshake, so the engine drives the steps
//! itself on the stack reqwest is built on: the system resolver (`getaddrinfo`, through
//! the [`Resolve`] trait so that tests can make it hang), `tokio::net::TcpSocket`,
//! `tokio-rustls`, and a hyper 1.x client connection: HTTP/2 when the server agrees to
//! `h2` by ALPN (as browsers and curl prefer), HTTP/1.1 otherwise. Every measurement
//! opens a fresh connection, as a first visit would.
//!
//! Redirects (301, 302, 303, 307, 308) are followed up to the task's limit, each hop on
//! its own fresh connection and each through the guard: a hop's name is resolved once,
//! every address checked, and the connection goes only to an address that passed, so a
//! redirect (or a rebinding DNS answer) cannot lead the agent into a private network.
//! Phases are summed over the hops as curl `-L` sums them; `redirect_us` is curl's
//! `time_redirect`. One difference from curl: curl reuses a kept-alive connection for a
//! redirect to the same host, the engine never does (each hop pays its own connect).
//!
//! The request accepts gzip, deflate and br; the body is decoded as it streams, so
//! `bytes` (wire) and `bytes_decoded` are both counted and `body_contains` is searched in
//! the decoded text. `max_bytes` bounds both, which also stops decompression bombs.
//!
//! Phase definitions follow curl's `-w` variables (DESIGN.md):
//! `dns` = resolution, `connect` = TCP handshake, `tls` = TLS handshake, `ttfb` = request
//! sent to response head received, `transfer` = head to last body byte, `total` = start to
//! last byte.
//!
//! Failures are classified where they happen into the stable codes of
//! [`ErrorKind`]: the resolver's own answer (`EAI_NONAME` is `dns_no_such_name`), the
//! socket error of the connect (`ECONNREFUSED` is `connect_refused`), the certificate
//! error rustls reports (unknown issuer, expired, wrong name), and, when the time limit
//! runs out, the phase that was in progress (resolving: `dns_timeout`, connecting:
//! `connect_timeout`, anything later: `total_timeout`).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::Request;
use hyper_util::rt::TokioIo;
use lastmile_protocol::{
    ErrorKind, Hop, Measurement, MeasurementError, Timings, DEFAULT_MAX_REDIRECTS,
};
use rustls::pki_types::ServerName;
use rustls::CertificateError;
use tokio::net::{TcpSocket, TcpStream};
use url::Url;

use crate::guard;

/// What the measured response must look like; failures are still timed.
#[derive(Debug, Clone)]
pub struct Expectations {
    /// Acceptable status codes; empty means any 2xx or 3xx.
    pub status: Vec<u16>,
    /// The body must contain this text (`body_mismatch` otherwise).
    pub body_contains: Option<String>,
    /// Largest body read before giving up with `body_too_large`.
    pub max_bytes: u64,
    /// Time limit for the whole measurement.
    pub timeout: Duration,
    /// Redirects followed at most (`too_many_redirects` past it); 0 does not follow.
    pub max_redirects: u32,
}

impl Default for Expectations {
    fn default() -> Self {
        Expectations {
            status: Vec::new(),
            body_contains: None,
            max_bytes: 10 * 1024 * 1024,
            timeout: Duration::from_secs(30),
            max_redirects: DEFAULT_MAX_REDIRECTS,
        }
    }
}

/// Why a name did not resolve, as far as the resolver tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsFailure {
    /// The name does not exist or has no address (NXDOMAIN, NODATA).
    NoSuchName,
    /// The resolver did not answer in time (glibc's `EAI_AGAIN`, which it also returns
    /// for a server failure: it cannot tell the two apart).
    Timeout,
    /// Anything else, with the resolver's words.
    Other(String),
}

/// A pending resolution.
pub type Resolution = Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, DnsFailure>> + Send>>;

/// Name resolution. The engine uses [`SystemResolver`]; tests plug in their own.
pub trait Resolve: Send + Sync {
    /// The addresses of `host` (a name, never an IP literal).
    fn resolve(&self, host: &str) -> Resolution;
}

/// The operating system's resolver (`getaddrinfo` on a blocking thread), as curl and
/// browsers use it: `/etc/hosts`, nsswitch and the system's DNS settings all apply.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str) -> Resolution {
        let host = host.to_owned();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || system_lookup(&host))
                .await
                .map_err(|e| DnsFailure::Other(format!("resolver thread failed: {e}")))?
        })
    }
}

fn system_lookup(host: &str) -> Result<Vec<IpAddr>, DnsFailure> {
    use dns_lookup::{AddrInfoHints, LookupErrorKind, SockType};
    let hints = AddrInfoHints {
        socktype: SockType::Stream.into(),
        ..AddrInfoHints::default()
    };
    match dns_lookup::getaddrinfo(Some(host), None, Some(hints)) {
        Ok(found) => {
            let mut addrs: Vec<IpAddr> = Vec::new();
            for ip in found.filter_map(Result::ok).map(|a| a.sockaddr.ip()) {
                if !addrs.contains(&ip) {
                    addrs.push(ip);
                }
            }
            Ok(addrs)
        }
        Err(e) => Err(match e.kind() {
            LookupErrorKind::NoName | LookupErrorKind::NoData => DnsFailure::NoSuchName,
            LookupErrorKind::Again => DnsFailure::Timeout,
            other => DnsFailure::Other(format!("{other:?} (code {})", e.error_num())),
        }),
    }
}

/// curl's `--connect-to HOST:PORT:ADDR`: connections for `host:port` go to `addr`
/// instead. The demo uses it to send each agent's traffic through its emulated link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTo {
    pub host: String,
    pub port: u16,
    pub addr: SocketAddr,
}

impl std::str::FromStr for ConnectTo {
    type Err = String;
    /// Parses `HOST:PORT=ADDR:PORT`, e.g. `example.com:443=127.0.0.1:8443`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (from, to) = s
            .split_once('=')
            .ok_or_else(|| format!("expected HOST:PORT=ADDR:PORT, got {s:?}"))?;
        let (host, port) = from
            .rsplit_once(':')
            .ok_or_else(|| format!("expected HOST:PORT before '=', got {from:?}"))?;
        let port = port
            .parse()
            .map_err(|_| format!("invalid port {port:?} in {s:?}"))?;
        let addr = to
            .parse()
            .map_err(|_| format!("invalid socket address {to:?} in {s:?}"))?;
        Ok(ConnectTo {
            host: host.trim_matches(['[', ']']).to_owned(),
            port,
            addr,
        })
    }
}

/// Settings of the engine that hold for every measurement of one agent.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// Local-test mode: allow private, loopback and link-local targets.
    pub allow_private: bool,
    /// Extra CA certificates (PEM) to trust besides the public web roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Address to send from (the agent's own address on a multi-homed machine).
    pub source_addr: Option<IpAddr>,
    /// Connection overrides, as curl's `--connect-to`.
    pub connect_to: Vec<ConnectTo>,
    /// Networks fetched even though the guard forbids their range (a lab's private
    /// network, a test's one loopback address); everything else stays forbidden.
    pub allow_nets: Vec<ipnet::IpNet>,
}

/// The engine errors that prevent it from starting at all.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot read CA file {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
    #[error("CA file {path} holds no usable certificate")]
    NoCertificate { path: String },
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// Measures HTTP fetches. Cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Engine {
    config: Arc<EngineConfig>,
    tls: tokio_rustls::TlsConnector,
    resolver: Arc<dyn Resolve>,
}

impl Engine {
    /// Builds an engine, loading the extra CA file if one is configured.
    pub fn new(config: EngineConfig) -> Result<Engine, EngineError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &config.ca_file {
            add_ca_file(&mut roots, path)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // HTTP/2 when the server offers it, as browsers and curl do.
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Engine {
            config: Arc::new(config),
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            resolver: Arc::new(SystemResolver),
        })
    }

    /// The same engine resolving names with `resolver` instead of the system's.
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolve>) -> Engine {
        self.resolver = resolver;
        self
    }

    /// Fetches `url` once, following redirects up to `expect.max_redirects`, and reports
    /// its phase timings. Never fails: a failure is a measurement with an error kind
    /// and the timings of the phases it reached.
    pub async fn measure(&self, url: &str, expect: &Expectations) -> Measurement {
        let start = Instant::now();
        let mut trace = Trace {
            hops: Vec::new(),
            current: Probe::new(start),
        };
        let outcome =
            tokio::time::timeout(expect.timeout, self.follow(url, expect, &mut trace)).await;
        let outcome = outcome.unwrap_or_else(|_| Err(trace.current.timed_out(expect.timeout)));
        trace.into_measurement(start, outcome.err())
    }

    /// Fetches `url` and the redirects it leads to, each hop through the guard.
    async fn follow(
        &self,
        url: &str,
        expect: &Expectations,
        trace: &mut Trace,
    ) -> Result<(), MeasurementError> {
        let mut url = parse_task_url(url)?;
        loop {
            let follow = expect.max_redirects > 0;
            let location = match self.fetch(&url, expect, follow, &mut trace.current).await? {
                Next::Done => return Ok(()),
                Next::Redirect(location) => location,
            };
            url = trace.redirect(&url, &location, expect.max_redirects)?;
        }
    }

    /// One request on a fresh connection: resolve, connect, TLS, exchange.
    async fn fetch(
        &self,
        url: &Url,
        expect: &Expectations,
        follow: bool,
        probe: &mut Probe,
    ) -> Result<Next, MeasurementError> {
        let Target { https, host, port } = Target::of(url)?;

        probe.stage = Stage::Resolving;
        let addrs = self.resolve(&host, port).await?;
        probe.dns_done = Some(Instant::now());

        probe.stage = Stage::Connecting;
        let (stream, remote) = self.connect(&addrs).await?;
        probe.connect_done = Some(Instant::now());
        probe.remote = Some(remote);
        probe.stage = Stage::Exchanging;

        let mut request = request_for(url)?;

        if https {
            let tls = self.tls_handshake(&host, stream).await?;
            probe.tls_done = Some(Instant::now());
            if tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()) {
                as_http2(&mut request, url)?;
                let sent = send_http2(TokioIo::new(tls), request, probe).await?;
                probe.http_version = Some("2");
                return read_response(sent, expect, follow, probe).await;
            }
            let sent = send_http1(TokioIo::new(tls), request, probe).await?;
            probe.http_version = Some("1.1");
            read_response(sent, expect, follow, probe).await
        } else {
            probe.tls_done = probe.connect_done;
            let sent = send_http1(TokioIo::new(stream), request, probe).await?;
            probe.http_version = Some("1.1");
            read_response(sent, expect, follow, probe).await
        }
    }

    /// The TLS handshake with `host` over `stream`, its failure classified.
    pub(crate) async fn tls_handshake(
        &self,
        host: &str,
        stream: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, MeasurementError> {
        let name = ServerName::try_from(host.to_owned()).map_err(|e| {
            fail(
                ErrorKind::InvalidTask,
                format!("invalid TLS name {host:?}: {e}"),
            )
        })?;
        self.tls
            .connect(name, stream)
            .await
            .map_err(|e| tls_failure(host, &e))
    }

    /// The address measurements (and path traces) are sent from, if one is set.
    pub(crate) fn source_addr(&self) -> Option<IpAddr> {
        self.config.source_addr
    }

    /// Resolves the target, honouring `--connect-to`, and keeps only permitted addresses.
    pub(crate) async fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, MeasurementError> {
        let overridden = self
            .config
            .connect_to
            .iter()
            .find(|c| c.host.eq_ignore_ascii_case(host) && c.port == port);
        let addrs: Vec<SocketAddr> = match (overridden, host.parse::<IpAddr>()) {
            (Some(c), _) => vec![c.addr],
            (None, Ok(ip)) => vec![SocketAddr::new(ip, port)],
            (None, Err(_)) => match self.resolver.resolve(host).await {
                Ok(ips) => ips
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect(),
                Err(DnsFailure::NoSuchName) => {
                    return Err(fail(
                        ErrorKind::DnsNoSuchName,
                        format!("{host} does not exist (no such name)"),
                    ))
                }
                Err(DnsFailure::Timeout) => {
                    return Err(fail(
                        ErrorKind::DnsTimeout,
                        format!("the resolver gave no answer for {host}"),
                    ))
                }
                Err(DnsFailure::Other(why)) => {
                    return Err(fail(
                        ErrorKind::Dns,
                        format!("cannot resolve {host}: {why}"),
                    ))
                }
            },
        };
        if addrs.is_empty() {
            return Err(fail(
                ErrorKind::DnsNoSuchName,
                format!("{host} has no address"),
            ));
        }
        if self.config.allow_private {
            return Ok(addrs);
        }
        let allowed: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| {
                !guard::is_forbidden(a.ip())
                    || self.config.allow_nets.iter().any(|n| n.contains(&a.ip()))
            })
            .collect();
        if allowed.is_empty() {
            return Err(fail(
                ErrorKind::TargetForbidden,
                format!(
                    "{host} resolves only to private, loopback or link-local addresses ({}); \
                     agents fetch those only in local-test mode (--allow-private) or from \
                     networks the volunteer allowed (--allow-net)",
                    addrs
                        .iter()
                        .map(|a| a.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(allowed)
    }

    /// Connects to the first address that answers, from the configured source address,
    /// as RFC 8305 (Happy Eyeballs) races them: the next address is tried when the last
    /// one failed or has not answered within [`CONNECTION_ATTEMPT_DELAY`], the earlier
    /// attempts going on; the first connection made wins. One unreachable address first
    /// in the list (a host's dead IPv6, a load balancer's drained node) had made the
    /// whole check a `connect_timeout`, as no browser would see it.
    pub(crate) async fn connect(
        &self,
        addrs: &[SocketAddr],
    ) -> Result<(TcpStream, SocketAddr), MeasurementError> {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let attempt = |addr: SocketAddr| async move { (addr, self.connect_one(addr).await) };
        let mut waiting = addrs.iter().copied();
        let mut racing = FuturesUnordered::new();
        let mut last_error = None;
        // Bounded: each turn starts an attempt or ends one, and there are addrs.len().
        loop {
            if racing.is_empty() {
                match waiting.next() {
                    Some(addr) => racing.push(attempt(addr)),
                    None => break,
                }
            }
            let more = waiting.len() > 0;
            tokio::select! {
                Some((addr, outcome)) = racing.next() => match outcome {
                    Ok(stream) => return Ok((stream, addr)),
                    Err(e) => {
                        last_error = Some((addr, e));
                        if let Some(next) = waiting.next() {
                            racing.push(attempt(next));
                        }
                    }
                },
                _ = tokio::time::sleep(CONNECTION_ATTEMPT_DELAY), if more => {
                    if let Some(next) = waiting.next() {
                        racing.push(attempt(next));
                    }
                }
            }
        }
        Err(match last_error {
            Some((addr, e)) => {
                let kind = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => ErrorKind::ConnectRefused,
                    std::io::ErrorKind::TimedOut => ErrorKind::ConnectTimeout,
                    _ => ErrorKind::Connect,
                };
                fail(kind, format!("cannot connect to {addr}: {e}"))
            }
            None => fail(ErrorKind::Connect, "no address to connect to"),
        })
    }

    async fn connect_one(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(source) = self.config.source_addr {
            if source.is_ipv4() == addr.is_ipv4() {
                socket.bind(SocketAddr::new(source, 0))?;
            }
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// How long a connection attempt has before the next address is tried beside it
/// (RFC 8305's recommended Connection Attempt Delay).
const CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// The GET request for `url` as the engine sends it (HTTP/1.1 form: origin-form path
/// and a `Host` header).
pub(crate) fn request_for(url: &Url) -> Result<Request<EmptyBody>, MeasurementError> {
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    Request::get(path)
        .header(hyper::header::HOST, authority_of(url))
        .header(
            hyper::header::USER_AGENT,
            concat!("lastmile-agent/", env!("CARGO_PKG_VERSION")),
        )
        .header(hyper::header::ACCEPT, "*/*")
        .header(hyper::header::ACCEPT_ENCODING, ACCEPT_ENCODING)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| fail(ErrorKind::InvalidTask, format!("cannot build request: {e}")))
}

/// `host[:port]` as the `Host` header and `:authority` carry it.
fn authority_of(url: &Url) -> String {
    match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    }
}

/// Turns a request from [`request_for`] into its HTTP/2 form: HTTP/2 names the target
/// in `:scheme` and `:authority`, not in `Host`.
pub(crate) fn as_http2(
    request: &mut Request<EmptyBody>,
    url: &Url,
) -> Result<(), MeasurementError> {
    *request.uri_mut() = format!("{}://{}{}", url.scheme(), authority_of(url), request.uri())
        .parse()
        .map_err(|e| fail(ErrorKind::InvalidTask, format!("bad URI: {e}")))?;
    request.headers_mut().remove(hyper::header::HOST);
    Ok(())
}

/// Classifies a failed TLS handshake by the certificate error rustls reports.
fn tls_failure(host: &str, e: &std::io::Error) -> MeasurementError {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let (kind, why) = match rustls_error {
        Some(rustls::Error::InvalidCertificate(cert)) => match cert {
            CertificateError::UnknownIssuer | CertificateError::Revoked => (
                ErrorKind::TlsUntrusted,
                "its certificate is not signed by a trusted authority",
            ),
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => (
                ErrorKind::TlsExpired,
                "its certificate is outside its validity period",
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                (
                    ErrorKind::TlsNameMismatch,
                    "its certificate is not valid for this name",
                )
            }
            _ => (ErrorKind::TlsHandshake, "its certificate was refused"),
        },
        _ => (ErrorKind::TlsHandshake, "the handshake failed"),
    };
    fail(kind, format!("TLS with {host}: {why} ({e})"))
}

/// Looks for a needle in a body that arrives in pieces, keeping only the last
/// `needle.len() - 1` bytes between pieces (never the whole body).
struct Matcher {
    finder: memchr::memmem::Finder<'static>,
    tail: Vec<u8>,
    found: bool,
}

impl Matcher {
    fn new(needle: &str) -> Matcher {
        Matcher {
            finder: memchr::memmem::Finder::new(needle.as_bytes()).into_owned(),
            tail: Vec::new(),
            found: needle.is_empty(),
        }
    }

    fn feed(&mut self, data: &[u8]) {
        if self.found {
            return;
        }
        let keep = self.finder.needle().len().saturating_sub(1);
        self.tail.extend_from_slice(data);
        if self.finder.find(&self.tail).is_some() {
            self.found = true;
            self.tail = Vec::new();
            return;
        }
        let cut = self.tail.len().saturating_sub(keep);
        self.tail.drain(..cut);
    }
}

/// What the request asks for: any encoding curl's `--compressed` and browsers accept
/// that the engine can decode.
const ACCEPT_ENCODING: &str = "gzip, deflate, br";

/// What comes after a response.
pub(crate) enum Next {
    /// The measurement is complete.
    Done,
    /// A redirect to follow, to this (possibly relative) location.
    Redirect(String),
}

/// Decodes a compressed body as it arrives (`Content-Encoding`), so that the decoded
/// size is counted and `body_contains` searched without holding the body.
enum Decoder {
    Gzip(flate2::write::GzDecoder<Bounded>),
    Deflate(flate2::write::ZlibDecoder<Bounded>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Bounded>>),
}

/// Where a decoder writes: it takes at most `room` bytes, then refuses, so that a
/// compression bomb (1.6 KB of brotli is 2 GiB) stops at the body's limit instead of
/// filling the volunteer's memory, and costs no more CPU than the limit's worth.
#[derive(Default)]
struct Bounded {
    decoded: Vec<u8>,
    room: u64,
    /// Set once a write was refused.
    over: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if (self.decoded.len() + data.len()) as u64 > self.room {
            self.over = true;
            return Err(std::io::Error::other("the decoded body exceeds its limit"));
        }
        self.decoded.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Decoder {
    /// The decoder for a `Content-Encoding` value; `None` for identity or an encoding
    /// we did not ask for (then the body is taken as it is).
    fn for_encoding(encoding: &str) -> Option<Decoder> {
        match encoding.trim().to_ascii_lowercase().as_str() {
            "gzip" | "x-gzip" => Some(Decoder::Gzip(flate2::write::GzDecoder::new(
                Bounded::default(),
            ))),
            "deflate" => Some(Decoder::Deflate(flate2::write::ZlibDecoder::new(
                Bounded::default(),
            ))),
            "br" => Some(Decoder::Brotli(Box::new(
                brotli_decompressor::DecompressorWriter::new(Bounded::default(), 16 * 1024),
            ))),
            _ => None,
        }
    }

    /// Feeds wire bytes in and returns the bytes decoded so far, at most `room` of them
    /// ([`Decoder::over`] says when more were coming).
    fn decode(&mut self, data: &[u8], room: u64) -> std::io::Result<Vec<u8>> {
        use std::io::Write;
        self.output().room = room;
        match self {
            Decoder::Gzip(d) => d.write_all(data)?,
            Decoder::Deflate(d) => d.write_all(data)?,
            Decoder::Brotli(d) => d.write_all(data)?,
        }
        Ok(std::mem::take(&mut self.output().decoded))
    }

    /// Ends the stream (a truncated one is an error) and returns the last bytes, at
    /// most `room` of them.
    fn finish(&mut self, room: u64) -> std::io::Result<Vec<u8>> {
        self.output().room = room;
        match self {
            Decoder::Gzip(d) => d.try_finish()?,
            Decoder::Deflate(d) => d.try_finish()?,
            Decoder::Brotli(d) => d
                .close()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
        }
        Ok(std::mem::take(&mut self.output().decoded))
    }

    /// Whether the decoded body went past the room it was given.
    fn over(&mut self) -> bool {
        self.output().over
    }

    fn output(&mut self) -> &mut Bounded {
        match self {
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Deflate(d) => d.get_mut(),
            Decoder::Brotli(d) => d.get_mut(),
        }
    }
}

pub(crate) type EmptyBody = http_body_util::Empty<bytes::Bytes>;

/// A response head received, with the task that drives its connection when the
/// connection is this request's alone (it is ended once the body is read); a pooled
/// connection of a page load has no driver here and lives on.
pub(crate) struct Sent {
    pub(crate) response: hyper::Response<hyper::body::Incoming>,
    pub(crate) driver: Option<tokio::task::JoinHandle<()>>,
}

/// Sends a request with `send`, stamping when it left and when the response's head
/// came back (the probe's `ttfb`).
pub(crate) async fn timed_send<F, R>(
    probe: &mut Probe,
    send: F,
) -> Result<hyper::Response<hyper::body::Incoming>, MeasurementError>
where
    F: FnOnce() -> R,
    R: Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>>,
{
    probe.request_sent = Some(Instant::now());
    let response = send()
        .await
        .map_err(|e| fail(ErrorKind::Http, format!("no response: {e}")))?;
    probe.first_byte = Some(Instant::now());
    Ok(response)
}

/// Sends a request, timed, on a new connection whose `connection` future (hyper's
/// half that does the I/O) runs on a task of its own. The task ends when the response
/// is read or the measurement is dropped.
async fn sent_on_new_connection<C, F, R>(
    probe: &mut Probe,
    connection: C,
    send: F,
) -> Result<Sent, MeasurementError>
where
    C: Future + Send + 'static,
    F: FnOnce() -> R,
    R: Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>>,
{
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = timed_send(probe, send).await?;
    Ok(Sent {
        response,
        driver: Some(driver),
    })
}

/// Sends the request on a fresh HTTP/1.1 connection.
async fn send_http1<S>(
    io: TokioIo<S>,
    request: Request<EmptyBody>,
    probe: &mut Probe,
) -> Result<Sent, MeasurementError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // A 64 KiB read buffer instead of hyper's adaptive one (starting at 8 KiB): a body
    // already in the socket is read in a few large reads, as curl does, rather than
    // many small ones that add their overhead to `transfer` (fidelity bench: 64 KiB
    // local fetch +0.69 ms -> +0.42 ms against curl).
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .read_buf_exact_size(Some(64 * 1024))
        .handshake(io)
        .await
        .map_err(|e| fail(ErrorKind::Http, format!("HTTP handshake failed: {e}")))?;
    sent_on_new_connection(probe, connection, || sender.send_request(request)).await
}

/// Sends the request on a fresh HTTP/2 connection (after ALPN chose `h2`).
async fn send_http2<S>(
    io: TokioIo<S>,
    request: Request<EmptyBody>,
    probe: &mut Probe,
) -> Result<Sent, MeasurementError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .map_err(|e| fail(ErrorKind::Http, format!("HTTP/2 handshake failed: {e}")))?;
    sent_on_new_connection(probe, connection, || sender.send_request(request)).await
}

/// A redirect's body read at most, bytes, on a connection of the request's own (a
/// pooled one is read to its end, to be used again).
const MAX_REDIRECT_BODY_BYTES: u64 = 64 * 1024;

/// Reads the body to its end and checks the expectations. With `follow`, a redirect's
/// body is read (it is part of the hop's transfer; at most [`MAX_REDIRECT_BODY_BYTES`]
/// on a connection of its own) and its location returned instead.
pub(crate) async fn read_response(
    sent: Sent,
    expect: &Expectations,
    follow: bool,
    probe: &mut Probe,
) -> Result<Next, MeasurementError> {
    let Sent { response, driver } = sent;
    let end_connection = || {
        if let Some(d) = &driver {
            d.abort();
        }
    };
    let status = response.status().as_u16();
    probe.status = Some(status);
    probe.content_type = response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let redirect = if follow && matches!(status, 301 | 302 | 303 | 307 | 308) {
        response
            .headers()
            .get(hyper::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    } else {
        None
    };
    let encoding = response
        .headers()
        .get(hyper::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut decoder = Decoder::for_encoding(&encoding);
    let decode_error = |e: std::io::Error| {
        fail(
            ErrorKind::Http,
            format!("the {encoding} body cannot be decoded: {e}"),
        )
    };
    let too_large = |what: &str| {
        fail(
            ErrorKind::BodyTooLarge,
            format!("{what} exceeds the limit of {} bytes", expect.max_bytes),
        )
    };

    let mut matcher = expect.body_contains.as_deref().map(Matcher::new);
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| fail(ErrorKind::Http, format!("body broke off: {e}")))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        probe.bytes += data.len() as u64;
        if probe.bytes > expect.max_bytes {
            probe.last_byte = Some(Instant::now());
            end_connection();
            return Err(too_large("the body"));
        }
        if probe
            .shared
            .as_ref()
            .is_some_and(|b| !b.take(data.len() as u64, 0))
        {
            probe.last_byte = Some(Instant::now());
            end_connection();
            return Err(too_large("the page (all its bodies)"));
        }
        if let (Some(location), Some(_)) = (&redirect, &driver) {
            if probe.bytes > MAX_REDIRECT_BODY_BYTES {
                // Nobody reads a redirect's body: a big one is not drained but cut
                // off with its connection (its bytes would count in no result).
                probe.last_byte = Some(Instant::now());
                end_connection();
                return Ok(Next::Redirect(location.clone()));
            }
        }
        let room = expect.max_bytes.saturating_sub(probe.bytes_decoded);
        let room = probe.shared.as_ref().map_or(room, |b| room.min(b.room()));
        let decoded = match decoder.as_mut() {
            Some(d) => match d.decode(data, room) {
                Ok(decoded) => decoded,
                Err(_) if d.over() => {
                    probe.last_byte = Some(Instant::now());
                    end_connection();
                    return Err(too_large("the decoded body"));
                }
                Err(e) => return Err(decode_error(e)),
            },
            None => data.to_vec(),
        };
        probe.bytes_decoded += decoded.len() as u64;
        if probe.bytes_decoded > expect.max_bytes {
            probe.last_byte = Some(Instant::now());
            end_connection();
            return Err(too_large("the decoded body"));
        }
        if probe
            .shared
            .as_ref()
            .is_some_and(|b| !b.take(0, decoded.len() as u64))
        {
            probe.last_byte = Some(Instant::now());
            end_connection();
            return Err(too_large("the page decoded (all its bodies)"));
        }
        if let Some(m) = matcher.as_mut() {
            m.feed(&decoded);
        }
        if let Some(kept) = probe.body.as_mut() {
            kept.extend_from_slice(&decoded);
        }
    }
    probe.last_byte = Some(Instant::now());
    end_connection();
    if let Some(d) = decoder.as_mut() {
        let room = expect.max_bytes.saturating_sub(probe.bytes_decoded);
        let room = probe.shared.as_ref().map_or(room, |b| room.min(b.room()));
        let rest = match d.finish(room) {
            Ok(rest) => rest,
            Err(_) if d.over() => return Err(too_large("the decoded body")),
            Err(e) => return Err(decode_error(e)),
        };
        if let Some(budget) = &probe.shared {
            budget.take(0, rest.len() as u64);
        }
        probe.bytes_decoded += rest.len() as u64;
        if let Some(m) = matcher.as_mut() {
            m.feed(&rest);
        }
        if let Some(kept) = probe.body.as_mut() {
            kept.extend_from_slice(&rest);
        }
    }

    if let Some(location) = redirect {
        return Ok(Next::Redirect(location));
    }
    if let Some(e) = status_failure(status, expect) {
        return Err(e);
    }
    if matcher.is_some_and(|m| !m.found) {
        return Err(fail(
            ErrorKind::BodyMismatch,
            format!(
                "the body does not contain {:?}",
                expect.body_contains.as_deref().unwrap_or_default()
            ),
        ));
    }
    Ok(Next::Done)
}

/// The `http_status` failure of a response whose status the expectations do not
/// accept (empty: any 2xx or 3xx); `None` when it passes.
pub(crate) fn status_failure(status: u16, expect: &Expectations) -> Option<MeasurementError> {
    let status_ok = if expect.status.is_empty() {
        (200..400).contains(&status)
    } else {
        expect.status.contains(&status)
    };
    if status_ok {
        return None;
    }
    let wanted = if expect.status.is_empty() {
        "2xx or 3xx".to_owned()
    } else {
        expect
            .status
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(fail(
        ErrorKind::HttpStatus,
        format!("status {status}, expected {wanted}"),
    ))
}

/// The step a measurement is in, which names the timeout if the time limit runs out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    #[default]
    Starting,
    Resolving,
    Connecting,
    Exchanging,
}

impl Stage {
    /// The error for a time limit that ran out in this step: resolving is
    /// `dns_timeout`, connecting `connect_timeout`, anything else `total_timeout`.
    pub(crate) fn timed_out(self, limit: Duration) -> MeasurementError {
        let ms = limit.as_millis();
        match self {
            Stage::Resolving => fail(
                ErrorKind::DnsTimeout,
                format!("name resolution did not finish within the {ms} ms limit"),
            ),
            Stage::Connecting => fail(
                ErrorKind::ConnectTimeout,
                format!("the TCP handshake did not finish within the {ms} ms limit"),
            ),
            Stage::Starting | Stage::Exchanging => fail(
                ErrorKind::TotalTimeout,
                format!("no complete answer within {ms} ms"),
            ),
        }
    }
}

/// The requests of one measurement: redirects already followed and the current one.
pub(crate) struct Trace {
    pub(crate) hops: Vec<Hop>,
    pub(crate) current: Probe,
}

impl Trace {
    /// Follows a redirect to `location` answered by `url`, as a measurement and a page
    /// load both do: the location is joined against `url`, the request just finished
    /// becomes a [`Hop`] and a fresh probe starts for the target, which is returned.
    /// Past `max_redirects` hops it is `too_many_redirects`. (The target goes through
    /// the guard when it is requested, as every hop does.)
    pub(crate) fn redirect(
        &mut self,
        url: &Url,
        location: &str,
        max_redirects: u32,
    ) -> Result<Url, MeasurementError> {
        let target = url.join(location).map_err(|e| {
            fail(
                ErrorKind::Http,
                format!("redirect to an invalid location {location:?}: {e}"),
            )
        })?;
        if self.hops.len() as u32 >= max_redirects {
            return Err(fail(
                ErrorKind::TooManyRedirects,
                format!("more than {max_redirects} redirects (the last one to {target})"),
            ));
        }
        let mut next = Probe::new(Instant::now());
        next.shared = self.current.shared.clone();
        let done = std::mem::replace(&mut self.current, next);
        self.hops.push(done.hop(url.as_str(), target.as_str()));
        Ok(target)
    }

    /// The result: phases summed over every hop (as curl `-L` sums them), total from
    /// the start to the last byte, the final response's status, size and address.
    pub(crate) fn into_measurement(
        self,
        start: Instant,
        error: Option<MeasurementError>,
    ) -> Measurement {
        let last = self.current.timings();
        let mut timings = last;
        for hop in &self.hops {
            let t = hop.timings_us;
            timings.dns += t.dns;
            timings.connect += t.connect;
            timings.tls += t.tls;
            timings.ttfb += t.ttfb;
            timings.transfer += t.transfer;
        }
        let end = self.current.last_byte.unwrap_or_else(Instant::now);
        timings.total = micros(end.saturating_duration_since(start));
        let remote = self.current.remote;
        Measurement {
            status: self.current.status,
            bytes: self.current.bytes,
            error,
            timings_us: timings,
            bytes_decoded: self.current.bytes_decoded,
            remote_addr: remote.map(|a| a.ip().to_string()),
            ip_version: remote.map(|a| if a.is_ipv4() { 4 } else { 6 }),
            http_version: self.current.http_version.map(str::to_owned),
            redirect_us: micros(self.current.start.saturating_duration_since(start)),
            redirects: self.hops,
            page: None,
            throughput: None,
            video: None,
            udp: None,
        }
    }
}

/// Moments at which each phase of one request ended; phases not reached stay `None`.
#[derive(Debug)]
pub(crate) struct Probe {
    pub(crate) start: Instant,
    pub(crate) stage: Stage,
    pub(crate) dns_done: Option<Instant>,
    pub(crate) connect_done: Option<Instant>,
    pub(crate) tls_done: Option<Instant>,
    pub(crate) request_sent: Option<Instant>,
    pub(crate) first_byte: Option<Instant>,
    pub(crate) last_byte: Option<Instant>,
    pub(crate) remote: Option<SocketAddr>,
    pub(crate) http_version: Option<&'static str>,
    pub(crate) status: Option<u16>,
    pub(crate) bytes: u64,
    pub(crate) bytes_decoded: u64,
    /// The response's `Content-Type`.
    pub(crate) content_type: Option<String>,
    /// Time this request waited for a connection before its phases began (a page
    /// load's per-host limit); zero for a measurement's own fresh connection.
    pub(crate) queued: Duration,
    /// When `Some`, the decoded body is kept here (a page's HTML and stylesheets, which
    /// are parsed for what they reference; `max_bytes` bounds it).
    pub(crate) body: Option<Vec<u8>>,
    /// A budget this request shares with others (a page load's), drawn on as each
    /// frame arrives; kept across redirects.
    pub(crate) shared: Option<Arc<SharedBudget>>,
}

/// Bytes several requests may take together (a page's document and sub-resources),
/// counted frame by frame as they arrive, so that what is in flight at once cannot
/// pass the limit, and a load cut short still knows what it downloaded.
#[derive(Debug, Default)]
pub(crate) struct SharedBudget {
    pub(crate) limit: u64,
    /// Body bytes on the wire so far, every request's (redirects' too).
    pub(crate) wire: std::sync::atomic::AtomicU64,
    /// The same bodies decoded.
    pub(crate) decoded: std::sync::atomic::AtomicU64,
}

impl SharedBudget {
    pub(crate) fn new(limit: u64) -> SharedBudget {
        SharedBudget {
            limit,
            ..SharedBudget::default()
        }
    }

    /// Adds `wire` and `decoded` bytes; whether the total is still within the limit.
    fn take(&self, wire: u64, decoded: u64) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let w = self.wire.fetch_add(wire, SeqCst).saturating_add(wire);
        let d = self
            .decoded
            .fetch_add(decoded, SeqCst)
            .saturating_add(decoded);
        w <= self.limit && d <= self.limit
    }

    /// Decoded bytes still allowed.
    fn room(&self) -> u64 {
        use std::sync::atomic::Ordering::SeqCst;
        self.limit.saturating_sub(self.decoded.load(SeqCst))
    }
}

impl Probe {
    pub(crate) fn new(start: Instant) -> Probe {
        Probe {
            start,
            stage: Stage::Starting,
            dns_done: None,
            connect_done: None,
            tls_done: None,
            request_sent: None,
            first_byte: None,
            last_byte: None,
            remote: None,
            http_version: None,
            status: None,
            bytes: 0,
            bytes_decoded: 0,
            content_type: None,
            body: None,
            queued: Duration::ZERO,
            shared: None,
        }
    }

    /// When the request's own phases began: after any wait for a connection.
    pub(crate) fn began(&self) -> Instant {
        self.start + self.queued
    }

    /// The error for a time limit that ran out, named after the phase it interrupted.
    pub(crate) fn timed_out(&self, limit: Duration) -> MeasurementError {
        self.stage.timed_out(limit)
    }

    /// This request's phases; `total` runs from its start to its last byte (or now).
    pub(crate) fn timings(&self) -> Timings {
        let span = |from: Option<Instant>, to: Option<Instant>| match (from, to) {
            (Some(a), Some(b)) => micros(b.saturating_duration_since(a)),
            _ => 0,
        };
        Timings {
            dns: span(Some(self.began()), self.dns_done),
            connect: span(self.dns_done, self.connect_done),
            tls: span(self.connect_done, self.tls_done),
            ttfb: span(self.request_sent, self.first_byte),
            transfer: span(self.first_byte, self.last_byte),
            total: micros(
                self.last_byte
                    .unwrap_or_else(Instant::now)
                    .saturating_duration_since(self.start),
            ),
        }
    }

    /// This request as a followed redirect.
    pub(crate) fn hop(&self, url: &str, location: &str) -> Hop {
        Hop {
            url: url.to_owned(),
            status: self.status.unwrap_or_default(),
            location: location.to_owned(),
            remote_addr: self.remote.map(|a| a.ip().to_string()),
            timings_us: self.timings(),
        }
    }
}

pub(crate) fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// A task's URL, parsed; an unparsable one is the task's fault.
pub(crate) fn parse_task_url(url: &str) -> Result<Url, MeasurementError> {
    Url::parse(url).map_err(|e| fail(ErrorKind::InvalidTask, format!("invalid URL {url:?}: {e}")))
}

/// A task URL's host, an IPv6 literal without its brackets; a URL without one is the
/// task's fault.
pub(crate) fn host_of(url: &Url) -> Result<String, MeasurementError> {
    Ok(url
        .host_str()
        .ok_or_else(|| fail(ErrorKind::InvalidTask, "URL has no host"))?
        .trim_matches(['[', ']'])
        .to_owned())
}

/// Where a URL is fetched from: scheme, host (an IPv6 literal without brackets) and port.
pub(crate) struct Target {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

impl Target {
    /// Only `http` and `https` URLs with a host are fetched.
    pub fn of(url: &Url) -> Result<Target, MeasurementError> {
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(fail(
                    ErrorKind::InvalidTask,
                    format!("unsupported scheme {other:?} in {url}"),
                ))
            }
        };
        let host = host_of(url)?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| fail(ErrorKind::InvalidTask, "URL has no port"))?;
        Ok(Target { https, host, port })
    }
}

pub(crate) fn fail(kind: ErrorKind, message: impl Into<String>) -> MeasurementError {
    MeasurementError {
        kind,
        message: message.into(),
    }
}

fn add_ca_file(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), EngineError> {
    let display = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| EngineError::CaFile {
        path: display.clone(),
        source,
    })?;
    let mut added = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|source| EngineError::CaFile {
            path: display.clone(),
            source,
        })?;
        if roots.add(cert).is_ok() {
            added += 1;
        }
    }
    if added == 0 {
        return Err(EngineError::NoCertificate { path: display });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-shot HTTP server that waits `think` before answering with `body`.
    async fn server(status: u16, body: Vec<u8>, think: Duration) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    tokio::time::sleep(think).await;
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(&body).await;
                });
            }
        });
        addr
    }

    /// An engine that may reach 127.0.0.1, as every test server is there.
    pub(crate) fn local_engine() -> Engine {
        Engine::new(EngineConfig {
            allow_private: true,
            ..EngineConfig::default()
        })
        .unwrap()
    }

    /// The test bed's site on 127.0.0.1, answering after `think_ms`.
    pub(crate) async fn site(think_ms: u64) -> lastmile_testbed::site::TargetSite {
        lastmile_testbed::site::TargetSite::start(
            "127.0.0.1:0".parse().unwrap(),
            lastmile_testbed::site::SiteConfig {
                think_time: Duration::from_millis(think_ms),
                ..Default::default()
            },
        )
        .await
        .unwrap()
    }

    /// A local engine that reaches `authority` (host:port) at `addr` instead of where
    /// DNS says, trusting `ca_file` when given.
    pub(crate) fn engine_reaching(
        authority: &str,
        addr: std::net::SocketAddr,
        ca_file: Option<std::path::PathBuf>,
    ) -> Engine {
        Engine::new(EngineConfig {
            allow_private: true,
            ca_file,
            connect_to: vec![format!("{authority}={addr}").parse().unwrap()],
            ..EngineConfig::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn server_think_time_shows_up_in_ttfb_not_in_connect() {
        let addr = server(200, vec![b'x'; 1000], Duration::from_millis(80)).await;
        let m = local_engine()
            .measure(&format!("http://{addr}/"), &Expectations::default())
            .await;
        assert_eq!(m.error, None);
        assert_eq!(m.status, Some(200));
        assert_eq!(m.bytes, 1000);
        assert!(m.timings_us.ttfb >= 80_000, "{:?}", m.timings_us);
        assert!(m.timings_us.connect < 50_000, "{:?}", m.timings_us);
        assert_eq!(m.timings_us.tls, 0);
        let t = m.timings_us;
        assert!(t.total >= t.dns + t.connect + t.ttfb + t.transfer, "{t:?}");
    }

    #[tokio::test]
    async fn loopback_targets_are_refused_outside_local_test_mode() {
        let addr = server(200, b"hi".to_vec(), Duration::ZERO).await;
        let engine = Engine::new(EngineConfig::default()).unwrap();
        let m = engine
            .measure(&format!("http://{addr}/"), &Expectations::default())
            .await;
        assert_eq!(m.error.map(|e| e.kind), Some(ErrorKind::TargetForbidden));
        assert_eq!(m.status, None);
    }

    #[tokio::test]
    async fn unexpected_status_is_an_error_with_timings() {
        let addr = server(503, b"down".to_vec(), Duration::ZERO).await;
        let m = local_engine()
            .measure(&format!("http://{addr}/"), &Expectations::default())
            .await;
        assert_eq!(m.status, Some(503));
        assert_eq!(m.error.map(|e| e.kind), Some(ErrorKind::HttpStatus));
        assert!(m.timings_us.total > 0);
    }

    #[tokio::test]
    async fn oversized_body_is_cut_off() {
        let addr = server(200, vec![0; 200_000], Duration::ZERO).await;
        let expect = Expectations {
            max_bytes: 10_000,
            ..Expectations::default()
        };
        let m = local_engine()
            .measure(&format!("http://{addr}/"), &expect)
            .await;
        assert_eq!(m.error.map(|e| e.kind), Some(ErrorKind::BodyTooLarge));
    }

    #[tokio::test]
    async fn refused_connection_is_connect_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let m = local_engine()
            .measure(&format!("http://{addr}/"), &Expectations::default())
            .await;
        assert_eq!(m.error.map(|e| e.kind), Some(ErrorKind::ConnectRefused));
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let addr = server(200, vec![], Duration::from_secs(10)).await;
        let expect = Expectations {
            timeout: Duration::from_millis(200),
            ..Expectations::default()
        };
        let m = local_engine()
            .measure(&format!("http://{addr}/"), &expect)
            .await;
        assert_eq!(m.error.map(|e| e.kind), Some(ErrorKind::TotalTimeout));
        assert!(m.timings_us.total >= 200_000);
    }

    #[tokio::test]
    async fn connect_to_sends_the_connection_elsewhere() {
        let addr = server(200, b"via".to_vec(), Duration::ZERO).await;
        let engine = engine_reaching("site.example:80", addr, None);
        let m = engine
            .measure("http://site.example/", &Expectations::default())
            .await;
        assert_eq!(m.error, None);
        assert_eq!(m.bytes, 3);
    }

    #[test]
    fn connect_to_parses_curl_style_overrides() {
        let c: ConnectTo = "example.com:443=127.0.0.1:8443".parse().unwrap();
        assert_eq!(c.host, "example.com");
        assert_eq!(c.port, 443);
        assert_eq!(c.addr, "127.0.0.1:8443".parse().unwrap());
        assert!("example.com=127.0.0.1:1".parse::<ConnectTo>().is_err());
    }

    fn kind(m: &Measurement) -> Option<ErrorKind> {
        m.error.as_ref().map(|e| e.kind)
    }

    fn short(timeout_ms: u64) -> Expectations {
        Expectations {
            timeout: Duration::from_millis(timeout_ms),
            ..Expectations::default()
        }
    }

    /// A resolver that answers nothing, ever, or always the same.
    struct FakeResolver(Option<Result<Vec<IpAddr>, DnsFailure>>);

    impl Resolve for FakeResolver {
        fn resolve(&self, _host: &str) -> Resolution {
            let answer = self.0.clone();
            Box::pin(async move {
                match answer {
                    Some(answer) => answer,
                    None => std::future::pending().await,
                }
            })
        }
    }

    #[tokio::test]
    async fn a_name_under_dot_invalid_is_dns_no_such_name() {
        // RFC 2606/6761: `.invalid` never exists; the system resolver says so at once.
        let m = local_engine()
            .measure("http://nosuch.lastmile.invalid/", &short(10_000))
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::DnsNoSuchName), "{m:?}");
        assert_eq!(m.status, None);
    }

    #[tokio::test]
    async fn a_resolver_that_never_answers_is_dns_timeout() {
        let engine = local_engine().with_resolver(Arc::new(FakeResolver(None)));
        let m = engine.measure("http://site.example/", &short(200)).await;
        assert_eq!(kind(&m), Some(ErrorKind::DnsTimeout), "{m:?}");
        assert!(m.timings_us.total >= 200_000);
        assert_eq!(m.timings_us.dns, 0, "resolution never finished");
    }

    #[tokio::test]
    async fn resolver_failures_keep_their_kind() {
        for (failure, expected) in [
            (DnsFailure::Timeout, ErrorKind::DnsTimeout),
            (DnsFailure::NoSuchName, ErrorKind::DnsNoSuchName),
            (DnsFailure::Other("SERVFAIL".into()), ErrorKind::Dns),
        ] {
            let engine = local_engine().with_resolver(Arc::new(FakeResolver(Some(Err(failure)))));
            let m = engine.measure("http://site.example/", &short(5_000)).await;
            assert_eq!(kind(&m), Some(expected), "{m:?}");
        }
    }

    #[tokio::test]
    async fn a_listener_whose_backlog_is_full_is_connect_timeout() {
        // With a full accept queue Linux drops further SYNs, so the handshake never
        // completes: the time limit runs out while connecting.
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut fillers = Vec::new();
        for _ in 0..4 {
            if let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
            {
                fillers.push(s);
            }
        }
        let m = local_engine()
            .measure(&format!("http://{addr}/"), &short(500))
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::ConnectTimeout), "{m:?}");
        drop(listener);
    }

    #[tokio::test]
    async fn a_server_that_hangs_up_without_answering_is_an_http_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let _ = sock.read(&mut buf).await;
                drop(sock);
            }
        });
        let m = local_engine()
            .measure(&format!("http://{addr}/"), &short(5_000))
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::Http), "{m:?}");
    }

    #[tokio::test]
    async fn a_url_the_agent_cannot_fetch_is_an_invalid_task() {
        let m = local_engine()
            .measure("ftp://site.example/", &short(5_000))
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::InvalidTask), "{m:?}");
    }

    #[tokio::test]
    async fn body_contains_is_checked_and_a_missing_text_is_body_mismatch() {
        let addr = server(
            200,
            b"<html>Welcome to the shop</html>".to_vec(),
            Duration::ZERO,
        )
        .await;
        let url = format!("http://{addr}/");
        let expect = |text: &str| Expectations {
            body_contains: Some(text.into()),
            ..short(5_000)
        };
        let found = local_engine().measure(&url, &expect("the shop")).await;
        assert_eq!(found.error, None);
        let missing = local_engine().measure(&url, &expect("Sold out")).await;
        assert_eq!(kind(&missing), Some(ErrorKind::BodyMismatch), "{missing:?}");
        assert_eq!(missing.status, Some(200));
        assert!(missing.error.unwrap().message.contains("Sold out"));
    }

    #[tokio::test]
    async fn an_expected_status_set_accepts_its_members_only() {
        let addr = server(301, vec![], Duration::ZERO).await;
        let url = format!("http://{addr}/");
        let expect = |status: Vec<u16>| Expectations {
            status,
            ..short(5_000)
        };
        let m = local_engine().measure(&url, &expect(vec![200, 301])).await;
        assert_eq!(m.error, None);
        let m = local_engine().measure(&url, &expect(vec![200])).await;
        assert_eq!(kind(&m), Some(ErrorKind::HttpStatus));
        assert!(m.error.unwrap().message.contains("expected 200"));
    }

    #[test]
    fn the_matcher_finds_text_split_across_pieces() {
        let mut m = Matcher::new("needle");
        for piece in [&b"hay ne"[..], b"e", b"dle hay"] {
            m.feed(piece);
        }
        assert!(m.found);
        let mut m = Matcher::new("needle");
        for piece in [&b"needl"[..], b"x", b"eedle"] {
            m.feed(piece);
        }
        assert!(!m.found);
    }

    /// A running HTTPS test site, an engine set up to reach it, and the directory
    /// holding the CA file the engine trusts (dropped with it).
    pub(crate) type HttpsTarget = (
        lastmile_testbed::site::TargetSite,
        Engine,
        tempfile::TempDir,
    );

    /// An HTTPS target for `site.test` (reached through `--connect-to`) with the given
    /// server configuration, and an engine that trusts `ca` when `trusting`.
    async fn tls_target(
        tls: Arc<rustls::ServerConfig>,
        ca: &lastmile_testbed::tls::TestCa,
        trusting: bool,
    ) -> HttpsTarget {
        let config = lastmile_testbed::site::SiteConfig {
            tls: Some(tls),
            think_time: Duration::ZERO,
            ..Default::default()
        };
        https_site_for("site.test", config, ca, trusting).await
    }

    /// A test site started with `config` (its TLS from `ca`), and an engine that
    /// reaches `host` there through `--connect-to` and trusts `ca` when `trusting`.
    pub(crate) async fn https_site_for(
        host: &str,
        config: lastmile_testbed::site::SiteConfig,
        ca: &lastmile_testbed::tls::TestCa,
        trusting: bool,
    ) -> HttpsTarget {
        let site =
            lastmile_testbed::site::TargetSite::start("127.0.0.1:0".parse().unwrap(), config)
                .await
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = ca.cert_file(dir.path()).unwrap();
        let engine = engine_reaching(
            &format!("{host}:443"),
            site.addr(),
            trusting.then_some(ca_file),
        );
        (site, engine, dir)
    }

    #[tokio::test]
    async fn certificate_problems_each_have_their_own_kind() {
        let ca = lastmile_testbed::tls::TestCa::new().unwrap();
        let url = "https://site.test/";

        let (_site, engine, _dir) =
            tls_target(ca.server_config(&["site.test"]).unwrap(), &ca, true).await;
        let m = engine.measure(url, &short(5_000)).await;
        assert_eq!(m.error, None, "a good certificate passes");
        assert!(m.timings_us.tls > 0);

        let (_site, engine, _dir) =
            tls_target(ca.server_config(&["site.test"]).unwrap(), &ca, false).await;
        let m = engine.measure(url, &short(5_000)).await;
        assert_eq!(kind(&m), Some(ErrorKind::TlsUntrusted), "{m:?}");

        let (_site, engine, _dir) =
            tls_target(ca.expired_server_config(&["site.test"]).unwrap(), &ca, true).await;
        let m = engine.measure(url, &short(5_000)).await;
        assert_eq!(kind(&m), Some(ErrorKind::TlsExpired), "{m:?}");

        let (_site, engine, _dir) =
            tls_target(ca.server_config(&["other.test"]).unwrap(), &ca, true).await;
        let m = engine.measure(url, &short(5_000)).await;
        assert_eq!(kind(&m), Some(ErrorKind::TlsNameMismatch), "{m:?}");
        assert!(m.error.unwrap().message.contains("site.test"));
    }

    #[tokio::test]
    async fn a_server_that_does_not_speak_tls_is_tls_handshake() {
        let addr = server(200, b"plain".to_vec(), Duration::ZERO).await;
        let engine = engine_reaching("site.test:443", addr, None);
        let m = engine.measure("https://site.test/", &short(5_000)).await;
        assert_eq!(kind(&m), Some(ErrorKind::TlsHandshake), "{m:?}");
    }

    /// A server on `ip` answering each request with what `answer` makes of the request
    /// text, after `think`; counts the connections it accepted.
    async fn scripted(
        ip: &str,
        think: Duration,
        answer: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
    ) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(answer);
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                    tokio::time::sleep(think).await;
                    let _ = sock.write_all(&answer(&request)).await;
                });
            }
        });
        (addr, accepted)
    }

    fn path_of(request: &str) -> &str {
        request.split_whitespace().nth(1).unwrap_or("/")
    }

    fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        out
    }

    #[tokio::test]
    async fn redirects_are_followed_each_hop_recorded_and_phases_summed() {
        let think = Duration::from_millis(30);
        let (last, _) = scripted("127.0.0.1", think, |_| response(200, &[], b"arrived")).await;
        let (first, _) = scripted("127.0.0.1", think, move |req| match path_of(req) {
            "/" => response(302, &[("location", "/next")], b"moved"),
            _ => response(301, &[("location", &format!("http://{last}/end"))], b""),
        })
        .await;
        let m = local_engine()
            .measure(&format!("http://{first}/"), &short(10_000))
            .await;
        assert_eq!(m.error, None, "{m:?}");
        assert_eq!(m.status, Some(200));
        assert_eq!(m.bytes, 7, "bytes are the final response's");
        let hops: Vec<(u16, &str, &str)> = m
            .redirects
            .iter()
            .map(|h| (h.status, h.url.as_str(), h.location.as_str()))
            .collect();
        let (first_url, next_url, end_url) = (
            format!("http://{first}/"),
            format!("http://{first}/next"),
            format!("http://{last}/end"),
        );
        assert_eq!(
            hops,
            vec![
                (302, first_url.as_str(), next_url.as_str()),
                (301, next_url.as_str(), end_url.as_str())
            ]
        );
        // Each of the three requests waited 30 ms for its answer; ttfb sums them.
        let t = m.timings_us;
        assert!(t.ttfb >= 90_000, "{t:?}");
        let hop_ttfb: u64 = m.redirects.iter().map(|h| h.timings_us.ttfb).sum();
        assert!(hop_ttfb >= 60_000 && t.ttfb > hop_ttfb, "{m:?}");
        let hop_total: u64 = m.redirects.iter().map(|h| h.timings_us.total).sum();
        assert!(m.redirect_us >= hop_total, "{m:?}");
        assert!(t.total >= m.redirect_us + 30_000, "{m:?}");
    }

    #[tokio::test]
    async fn a_redirect_loop_ends_in_too_many_redirects() {
        let (addr, _) = scripted("127.0.0.1", Duration::ZERO, |_| {
            response(302, &[("location", "/")], b"")
        })
        .await;
        let url = format!("http://{addr}/");
        let expect = Expectations {
            max_redirects: 3,
            ..short(10_000)
        };
        let m = local_engine().measure(&url, &expect).await;
        assert_eq!(kind(&m), Some(ErrorKind::TooManyRedirects), "{m:?}");
        assert_eq!(m.redirects.len(), 3);
        assert_eq!(m.status, Some(302));

        // With 0, redirects are not followed: the 3xx is the answer.
        let expect = Expectations {
            max_redirects: 0,
            ..short(10_000)
        };
        let m = local_engine().measure(&url, &expect).await;
        assert_eq!(m.error, None, "{m:?}");
        assert_eq!(m.status, Some(302));
        assert!(m.redirects.is_empty());
    }

    #[tokio::test]
    async fn a_redirect_into_a_forbidden_range_is_refused_before_connecting() {
        // Only 127.0.0.1 is allowed; the rest of 127.0.0.0/8 stays forbidden.
        let engine = Engine::new(EngineConfig {
            allow_nets: vec!["127.0.0.1/32".parse().unwrap()],
            ..EngineConfig::default()
        })
        .unwrap();
        let (inside, inside_hits) = scripted("127.0.0.2", Duration::ZERO, |_| {
            response(200, &[], b"secret")
        })
        .await;
        let (outside, _) = scripted("127.0.0.1", Duration::ZERO, move |req| {
            match path_of(req) {
                "/ok" => response(200, &[], b"fine"),
                "/by-address" => response(302, &[("location", &format!("http://{inside}/"))], b""),
                // A name that resolves to the forbidden address (DNS rebinding).
                _ => response(
                    302,
                    &[(
                        "location",
                        &format!("http://rebind.test:{}/", inside.port()),
                    )],
                    b"",
                ),
            }
        })
        .await;
        let m = engine
            .measure(&format!("http://{outside}/ok"), &short(5_000))
            .await;
        assert_eq!(m.error, None, "the allowed address is fetched: {m:?}");

        let m = engine
            .measure(&format!("http://{outside}/by-address"), &short(5_000))
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::TargetForbidden), "{m:?}");
        assert_eq!(m.redirects.len(), 1, "the first hop is recorded");

        let rebinding = engine.with_resolver(Arc::new(FakeResolver(Some(Ok(vec!["127.0.0.2"
            .parse()
            .unwrap()])))));
        let m = rebinding
            .measure(&format!("http://{outside}/by-name"), &short(5_000))
            .await;
        assert_eq!(kind(&m), Some(ErrorKind::TargetForbidden), "{m:?}");
        assert_eq!(
            inside_hits.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "no connection ever reached the forbidden address"
        );
    }

    #[tokio::test]
    async fn the_remote_address_and_its_family_are_recorded() {
        let (v4, _) = scripted("127.0.0.1", Duration::ZERO, |_| response(200, &[], b"4")).await;
        let m = local_engine()
            .measure(&format!("http://{v4}/"), &short(5_000))
            .await;
        assert_eq!(m.error, None);
        assert_eq!(
            (m.remote_addr.as_deref(), m.ip_version),
            (Some("127.0.0.1"), Some(4))
        );
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            eprintln!("no IPv6 loopback here; the IPv6 half is skipped");
            return;
        }
        let (v6, _) = scripted("::1", Duration::ZERO, |_| response(200, &[], b"6")).await;
        let m = local_engine()
            .measure(&format!("http://{v6}/"), &short(5_000))
            .await;
        assert_eq!(m.error, None, "{m:?}");
        assert_eq!(
            (m.remote_addr.as_deref(), m.ip_version),
            (Some("::1"), Some(6))
        );
    }

    fn compress(encoding: &str, data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        match encoding {
            "gzip" => {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            "deflate" => {
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            _ => {
                let mut out = Vec::new();
                {
                    let mut e = brotli::CompressorWriter::new(&mut out, 4096, 9, 22);
                    e.write_all(data).unwrap();
                }
                out
            }
        }
    }

    #[tokio::test]
    async fn compressed_bodies_are_counted_on_the_wire_and_decoded() {
        let mut page = b"<html>".to_vec();
        page.extend("lorem ipsum ".repeat(5_000).as_bytes());
        page.extend_from_slice(b"Order now</html>");
        for encoding in ["gzip", "deflate", "br"] {
            let wire = compress(encoding, &page);
            let (wire_len, page_len) = (wire.len() as u64, page.len() as u64);
            let (addr, _) = scripted("127.0.0.1", Duration::ZERO, move |req| {
                assert!(
                    req.to_ascii_lowercase()
                        .contains("accept-encoding: gzip, deflate, br"),
                    "{req}"
                );
                response(200, &[("content-encoding", encoding)], &wire)
            })
            .await;
            let url = format!("http://{addr}/");
            let expect = Expectations {
                body_contains: Some("Order now".into()),
                ..short(5_000)
            };
            let m = local_engine().measure(&url, &expect).await;
            assert_eq!(m.error, None, "{encoding}: {m:?}");
            assert_eq!(
                (m.bytes, m.bytes_decoded),
                (wire_len, page_len),
                "{encoding}"
            );
            assert!(m.bytes * 10 < m.bytes_decoded, "{encoding}");

            // The limit applies to the decoded size too: a small download that inflates
            // past it is cut off.
            let expect = Expectations {
                max_bytes: 10_000,
                ..short(5_000)
            };
            let m = local_engine().measure(&url, &expect).await;
            assert_eq!(kind(&m), Some(ErrorKind::BodyTooLarge), "{encoding}: {m:?}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_first_address_gives_way_to_the_next() {
        // A listener whose accept queue is full drops further SYNs: a connection to it
        // hangs as to a blackholed address (on the loopback, within this test).
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let full = socket.listen(0).unwrap();
        let dead = full.local_addr().unwrap();
        let mut queued = Vec::new();
        for _ in 0..4 {
            let connect = tokio::net::TcpStream::connect(dead);
            if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(200), connect).await
            {
                queued.push(stream);
            }
        }
        let hangs = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(dead),
        )
        .await;
        assert!(hangs.is_err(), "a full accept queue drops SYNs here");
        let (good, _) = scripted("127.0.0.1", Duration::ZERO, |_| response(200, &[], b"ok")).await;
        // The dead address first, as a host's dead IPv6 would be: the check used to
        // wait on it until its time limit.
        let began = Instant::now();
        let (_, addr) = tokio::time::timeout(
            Duration::from_secs(20),
            local_engine().connect(&[dead, good]),
        )
        .await
        .expect("not stuck on the dead address")
        .unwrap();
        assert_eq!(addr, good);
        assert!(
            began.elapsed() >= CONNECTION_ATTEMPT_DELAY,
            "the dead one was tried first"
        );
        drop((full, queued));
    }

    #[tokio::test]
    async fn a_redirects_body_is_not_drained() {
        // A redirect carrying 4 MB, more than the check allows a body: the agent had
        // read it all (uncounted in the result and the volunteer's allowance) and failed
        // the check as body_too_large; it now cuts it off and follows the location.
        let (addr, _) = scripted("127.0.0.1", Duration::ZERO, |req| {
            if req.starts_with("GET /final") {
                response(200, &[], b"arrived")
            } else {
                response(302, &[("location", "/final")], &vec![b'x'; 4_000_000])
            }
        })
        .await;
        let expect = Expectations {
            max_bytes: 1_000_000,
            max_redirects: 1,
            ..short(10_000)
        };
        let m = local_engine()
            .measure(&format!("http://{addr}/start"), &expect)
            .await;
        assert_eq!(m.error, None, "{m:?}");
        assert_eq!((m.status, m.bytes), (Some(200), 7));
        assert_eq!(m.redirects.len(), 1, "{m:?}");
    }

    #[test]
    fn a_decoder_holds_no_more_than_its_room() {
        // 16 MiB of zeros is ~16 KiB of gzip, a few KiB of brotli: one network read that
        // inflates a thousandfold. The decoder stops at the room it was given (it had
        // decoded all of it, then compared).
        let zeros = vec![0u8; 16 << 20];
        for encoding in ["gzip", "deflate", "br"] {
            let wire = compress(encoding, &zeros);
            assert!(wire.len() < 1 << 20, "{encoding}: {}", wire.len());
            let mut d = Decoder::for_encoding(encoding).unwrap();
            let refused = d.decode(&wire, 100_000);
            assert!(refused.is_err() && d.over(), "{encoding}");
            assert!(d.output().decoded.len() <= 100_000, "{encoding}");
            // With room for all of it, all of it.
            let mut d = Decoder::for_encoding(encoding).unwrap();
            let mut all = d.decode(&wire, u64::MAX).unwrap();
            all.extend(d.finish(u64::MAX).unwrap());
            assert_eq!(all.len(), zeros.len(), "{encoding}");
        }
    }

    #[tokio::test]
    async fn http2_is_used_when_the_server_offers_it_by_alpn() {
        use http_body_util::Full;
        let ca = lastmile_testbed::tls::TestCa::new().unwrap();
        let mut config = (*ca.server_config(&["site.test"]).unwrap()).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        |req: Request<hyper::body::Incoming>| async move {
                            let body = format!(
                                "h2 for {}",
                                req.uri()
                                    .authority()
                                    .map(|a| a.to_string())
                                    .unwrap_or_default()
                            );
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                bytes::Bytes::from(body),
                            )))
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let ca_file = ca.cert_file(dir.path()).unwrap();
        let engine = engine_reaching("site.test:443", addr, Some(ca_file));
        let expect = Expectations {
            body_contains: Some("h2 for site.test".into()),
            ..short(5_000)
        };
        let m = engine.measure("https://site.test/", &expect).await;
        assert_eq!(m.error, None, "{m:?}");
        assert_eq!(m.http_version.as_deref(), Some("2"));
        assert!(m.timings_us.tls > 0);

        // A server that speaks only HTTP/1.1 gets HTTP/1.1.
        let (_site, engine, _dir) =
            tls_target(ca.server_config(&["site.test"]).unwrap(), &ca, true).await;
        let m = engine.measure("https://site.test/", &short(5_000)).await;
        assert_eq!(m.error, None, "{m:?}");
        assert_eq!(m.http_version.as_deref(), Some("1.1"));
    }
}
