//! A small target web site for the demo and the end-to-end tests.
//!
//! It serves a home page of a fixed size (so that transfer time shows the link's
//! rate), optional server think time, the ownership-verification tokens the
//! controller fetches from `/.well-known/lastmile/<token>`, the demo shop's product
//! page with its sub-resources ([`crate::shop`], for `page` checks), the HLS streams
//! ([`crate::video`], video on demand and a live stream timed from the site's start, for
//! `video` checks), and a permanent
//! redirect from [`REDIRECT_PATH`] to the home page (for the hops a result records). It speaks just
//! enough HTTP/1.1 (with keep-alive, so that a page load can reuse its connections) and,
//! over TLS when configured, HTTP/2 by ALPN (hyper's server). It counts its
//! connections, open and at most at once, so that tests can see a client's connection
//! policy from the server's side.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How the site behaves.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    /// Size of the home page body, bytes.
    pub page_bytes: usize,
    /// Delay before answering, as a busy application server would.
    pub think_time: Duration,
    /// Serve HTTPS with this configuration instead of plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Send the home page with `Transfer-Encoding: chunked`, as a streaming
    /// application server does, instead of with a `Content-Length`.
    pub chunked: Option<Chunked>,
    /// Over TLS, offer HTTP/2 by ALPN (`h2`, then `http/1.1`), as most servers do.
    pub http2: bool,
}

/// How a chunked home page is sent.
#[derive(Debug, Clone, Copy)]
pub struct Chunked {
    /// Bytes per chunk.
    pub chunk_bytes: usize,
    /// Pause between chunks (the server rendering the next part).
    pub gap: Duration,
}

impl Default for SiteConfig {
    fn default() -> Self {
        SiteConfig {
            page_bytes: 8 * 1024,
            think_time: Duration::from_millis(5),
            tls: None,
            chunked: None,
            http2: false,
        }
    }
}

/// The site's connections as it saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Connections accepted since the start (or the last reset).
    pub accepted: usize,
    /// Connections open now.
    pub open: usize,
    /// Most connections open at once since the start (or the last reset).
    pub max_open: usize,
}

#[derive(Default)]
struct Counter {
    accepted: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
}

/// Counts one open connection for as long as it lives.
struct Open(Arc<Counter>);

impl Open {
    fn new(counter: &Arc<Counter>) -> Open {
        counter.accepted.fetch_add(1, Ordering::SeqCst);
        let now = counter.open.fetch_add(1, Ordering::SeqCst) + 1;
        counter.max_open.fetch_max(now, Ordering::SeqCst);
        Open(counter.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the site serves besides tokens: the home page, the shop page's files and a
/// download.
struct Content {
    home: Vec<u8>,
    files: HashMap<String, (&'static str, Vec<u8>)>,
    /// When the site started: the live stream's clock ([`crate::video`]), and the same
    /// moment on the wall clock, as its MPD announces it.
    started: Instant,
    started_at: std::time::SystemTime,
}

impl Content {
    fn new(page_bytes: usize) -> Content {
        let mut files = HashMap::new();
        files.insert(
            crate::shop::PAGE_PATH.to_owned(),
            ("text/html; charset=utf-8", crate::shop::html().into_bytes()),
        );
        for r in crate::shop::resources()
            .into_iter()
            .chain([crate::shop::download()])
        {
            files.insert(r.path, (r.content_type, r.body));
        }
        Content {
            home: home_page(page_bytes),
            files,
            started: Instant::now(),
            // After the instant, so the MPD announces each segment no earlier than
            // the site publishes it.
            started_at: crate::video::live_start_on_wall_clock(),
        }
    }

    /// The answer to a GET of `path`.
    fn route(&self, path: &str, tokens: &Mutex<HashSet<String>>) -> Answer {
        let path = path.split('?').next().unwrap_or(path);
        if path == "/" {
            Answer::ok("text/html; charset=utf-8", self.home.clone())
        } else if path == REDIRECT_PATH {
            Answer {
                status: 301,
                kind: "text/plain",
                body: b"moved to /".to_vec(),
                location: Some("/"),
            }
        } else if let Some(token) = path.strip_prefix("/.well-known/lastmile/") {
            let known = tokens.lock().map(|t| t.contains(token)).unwrap_or(false);
            if known {
                Answer::ok("text/plain", token.as_bytes().to_vec())
            } else {
                Answer::not_found(b"unknown token".to_vec())
            }
        } else if let Some((kind, body)) = self.files.get(path) {
            Answer::ok(kind, body.clone())
        } else if let Some((kind, body)) =
            crate::video::answer(path, self.started.elapsed(), self.started_at)
        {
            Answer::ok(kind, body)
        } else {
            Answer::not_found(NOT_FOUND.to_vec())
        }
    }
}

/// One response: status, content type, body and, for a redirect, where to.
struct Answer {
    status: u16,
    kind: &'static str,
    body: Vec<u8>,
    location: Option<&'static str>,
}

impl Answer {
    fn ok(kind: &'static str, body: Vec<u8>) -> Answer {
        Answer {
            status: 200,
            kind,
            body,
            location: None,
        }
    }

    fn not_found(body: Vec<u8>) -> Answer {
        Answer {
            status: 404,
            kind: "text/plain",
            body,
            location: None,
        }
    }

    /// The HTTP/1.1 status line's code and reason.
    fn status_line(&self) -> &'static str {
        match self.status {
            200 => "200 OK",
            301 => "301 Moved Permanently",
            _ => "404 Not Found",
        }
    }
}

/// The body of every 404 for an unknown path.
pub const NOT_FOUND: &[u8] = b"not found";

/// A path that answers `301 Moved Permanently` with `Location: /` (relative, as many
/// servers send it): one redirect hop before the home page.
pub const REDIRECT_PATH: &str = "/moved";

/// A running target site. Dropping it stops the server.
pub struct TargetSite {
    addr: SocketAddr,
    scheme: &'static str,
    tokens: Arc<Mutex<HashSet<String>>>,
    counter: Arc<Counter>,
    task: JoinHandle<()>,
}

impl TargetSite {
    /// Starts the site on `listen` (port 0 for any free port).
    pub async fn start(listen: SocketAddr, config: SiteConfig) -> std::io::Result<TargetSite> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let tokens = Arc::new(Mutex::new(HashSet::new()));
        let content = Arc::new(Content::new(config.page_bytes));
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let counter = Arc::new(Counter::default());
        let task = tokio::spawn(serve(
            listener,
            tokens.clone(),
            content,
            config,
            counter.clone(),
        ));
        Ok(TargetSite {
            addr,
            scheme,
            tokens,
            counter,
            task,
        })
    }

    /// The address the site listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The site's origin, e.g. `http://127.0.0.1:40123`.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The connections seen so far.
    pub fn connections(&self) -> ConnectionStats {
        ConnectionStats {
            accepted: self.counter.accepted.load(Ordering::SeqCst),
            open: self.counter.open.load(Ordering::SeqCst),
            max_open: self.counter.max_open.load(Ordering::SeqCst),
        }
    }

    /// Starts counting afresh (`open` stays what it is).
    pub fn reset_connection_stats(&self) {
        self.counter.accepted.store(0, Ordering::SeqCst);
        let open = self.counter.open.load(Ordering::SeqCst);
        self.counter.max_open.store(open, Ordering::SeqCst);
    }

    /// Serves `token` at `/.well-known/lastmile/<token>`, proving ownership.
    pub fn publish_verification_token(&self, token: &str) {
        if let Ok(mut t) = self.tokens.lock() {
            t.insert(token.to_owned());
        }
    }
}

impl Drop for TargetSite {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn home_page(size: usize) -> Vec<u8> {
    let head = "<!doctype html><html><head><title>Lastmile demo shop</title></head><body><h1>Welcome</h1><p>";
    let tail = "</p></body></html>\n";
    let filler = size.saturating_sub(head.len() + tail.len());
    let mut page = Vec::with_capacity(size);
    page.extend_from_slice(head.as_bytes());
    page.extend(std::iter::repeat_n(b'x', filler));
    page.extend_from_slice(tail.as_bytes());
    page
}

async fn serve(
    listener: TcpListener,
    tokens: Arc<Mutex<HashSet<String>>>,
    content: Arc<Content>,
    config: SiteConfig,
    counter: Arc<Counter>,
) {
    let mut connections = tokio::task::JoinSet::new();
    let tls = config.tls.map(|tls| {
        if config.http2 {
            let mut offering = (*tls).clone();
            offering.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Arc::new(offering)
        } else {
            tls
        }
    });
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let think = config.think_time;
    let chunked = config.chunked;
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        let open = Open::new(&counter);
        while connections.try_join_next().is_some() {}
        let (tokens, content, acceptor) = (tokens.clone(), content.clone(), acceptor.clone());
        connections.spawn(async move {
            let _open = open;
            let _ = socket.set_nodelay(true);
            match acceptor {
                Some(acceptor) => {
                    let Ok(tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()) {
                        serve_http2(tls, tokens, content, think).await;
                    } else {
                        let _ = answer(tls, &tokens, &content, think, chunked).await;
                    }
                }
                None => {
                    let _ = answer(socket, &tokens, &content, think, chunked).await;
                }
            }
        });
    }
}

/// One HTTP/2 connection, through hyper's server.
async fn serve_http2<S>(
    io: S,
    tokens: Arc<Mutex<HashSet<String>>>,
    content: Arc<Content>,
    think: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (tokens, content) = (tokens.clone(), content.clone());
        async move {
            tokio::time::sleep(think).await;
            let answer = content.route(req.uri().path(), &tokens);
            let mut response = hyper::Response::builder()
                .status(answer.status)
                .header("content-type", answer.kind);
            if let Some(location) = answer.location {
                response = response.header("location", location);
            }
            // A HEAD gets the GET's head and no body (hyper's HTTP/2 server sends
            // what it is given).
            let body = if req.method() == hyper::Method::HEAD {
                Bytes::new()
            } else {
                Bytes::from(answer.body)
            };
            response.body(Full::new(body))
        }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// HTTP/1.1: answers requests on one connection until the client closes it or asks
/// to (`Connection: close`); a chunked home page ends the connection, as before.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut socket: S,
    tokens: &Mutex<HashSet<String>>,
    content: &Content,
    think: Duration,
    chunked: Option<Chunked>,
) -> std::io::Result<()> {
    let mut pending: Vec<u8> = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let end = loop {
            if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = tokio::time::timeout(Duration::from_secs(30), socket.read(&mut buf))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            if n == 0 || pending.len() > 16 * 1024 {
                return Ok(());
            }
            pending.extend_from_slice(&buf[..n]);
        };
        let head: Vec<u8> = pending.drain(..end).collect();
        let request = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let close = request
            .lines()
            .any(|l| l.starts_with("connection:") && l.contains("close"));
        let mut words = request.split_whitespace();
        // A HEAD is answered with the GET's head and no body (RFC 9110, 9.3.2): a
        // throughput load's probes are HEADs.
        let head_only = words.next() == Some("head");
        let path = String::from_utf8_lossy(&head)
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_owned();
        tokio::time::sleep(think).await;
        let answer = content.route(&path, tokens);
        let (status, kind, body) = (answer.status_line(), answer.kind, answer.body);
        if let (Some(c), "/") = (chunked, path.as_str()) {
            let header = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            );
            socket.write_all(header.as_bytes()).await?;
            for (i, part) in body.chunks(c.chunk_bytes.max(1)).enumerate() {
                if i > 0 {
                    tokio::time::sleep(c.gap).await;
                }
                socket
                    .write_all(format!("{:x}\r\n", part.len()).as_bytes())
                    .await?;
                socket.write_all(part).await?;
                socket.write_all(b"\r\n").await?;
                socket.flush().await?;
            }
            socket.write_all(b"0\r\n\r\n").await?;
            return socket.shutdown().await;
        }
        let header = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\n{}{}\r\n",
            body.len(),
            answer
                .location
                .map(|l| format!("location: {l}\r\n"))
                .unwrap_or_default(),
            if close { "connection: close\r\n" } else { "" }
        );
        // One write: headers and body leave together, as one stream of full segments.
        // Two writes let the link relay read the headers alone now and then, and a
        // small first segment reaches a dial-up client one segment time (~200 ms)
        // sooner: the demo's dial-up ttfb then jumped between ~220 and ~400 ms.
        let mut response = Vec::with_capacity(header.len() + body.len());
        response.extend_from_slice(header.as_bytes());
        if !head_only {
            response.extend_from_slice(&body);
        }
        socket.write_all(&response).await?;
        socket.flush().await?;
        if close {
            return socket.shutdown().await;
        }
    }
}
