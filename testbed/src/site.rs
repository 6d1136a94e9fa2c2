//! A small target web site for the demo and the end-to-end tests.
//!
//! It serves a home page of a fixed size (so that transfer time shows the link's
//! rate), optional server think time, and the ownership-verification tokens the
//! controller fetches from `/.well-known/lastmile/<token>`. It speaks just enough
//! HTTP/1.1 for one request per connection (`Connection: close`), which is exactly how
//! agents measure: a fresh connection per fetch.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
        }
    }
}

/// A running target site. Dropping it stops the server.
pub struct TargetSite {
    addr: SocketAddr,
    scheme: &'static str,
    tokens: Arc<Mutex<HashSet<String>>>,
    task: JoinHandle<()>,
}

impl TargetSite {
    /// Starts the site on `listen` (port 0 for any free port).
    pub async fn start(listen: SocketAddr, config: SiteConfig) -> std::io::Result<TargetSite> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let tokens = Arc::new(Mutex::new(HashSet::new()));
        let page = Arc::new(home_page(config.page_bytes));
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let task = tokio::spawn(serve(listener, tokens.clone(), page, config));
        Ok(TargetSite {
            addr,
            scheme,
            tokens,
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
    page: Arc<Vec<u8>>,
    config: SiteConfig,
) {
    let mut connections = tokio::task::JoinSet::new();
    let acceptor = config.tls.map(tokio_rustls::TlsAcceptor::from);
    let think = config.think_time;
    let chunked = config.chunked;
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let (tokens, page, acceptor) = (tokens.clone(), page.clone(), acceptor.clone());
        connections.spawn(async move {
            let _ = socket.set_nodelay(true);
            match acceptor {
                Some(acceptor) => {
                    if let Ok(tls) = acceptor.accept(socket).await {
                        let _ = answer(tls, &tokens, &page, think, chunked).await;
                    }
                }
                None => {
                    let _ = answer(socket, &tokens, &page, think, chunked).await;
                }
            }
        });
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut socket: S,
    tokens: &Mutex<HashSet<String>>,
    page: &[u8],
    think: Duration,
    chunked: Option<Chunked>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), socket.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let request = String::from_utf8_lossy(&head);
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
    tokio::time::sleep(think).await;
    let (status, body, kind): (&str, Vec<u8>, &str) = if path == "/" {
        ("200 OK", page.to_vec(), "text/html; charset=utf-8")
    } else if let Some(token) = path.strip_prefix("/.well-known/lastmile/") {
        let known = tokens.lock().map(|t| t.contains(token)).unwrap_or(false);
        if known {
            ("200 OK", token.as_bytes().to_vec(), "text/plain")
        } else {
            ("404 Not Found", b"unknown token".to_vec(), "text/plain")
        }
    } else {
        ("404 Not Found", b"not found".to_vec(), "text/plain")
    };
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
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(header.as_bytes()).await?;
    socket.write_all(&body).await?;
    socket.shutdown().await
}
