//! The kept-alive connections of one measurement, as a throughput load and a video
//! session open them.
//!
//! A [`Dialer`] opens connections to one host whose name the measurement resolved once
//! and whose addresses the target guard let through: TCP, TLS with ALPN (HTTP/2 when
//! the server agrees), and the HTTP handshake ALPN calls for. A [`Conn`] carries one
//! request after the other and times each (request sent to response head). Every task a
//! connection needs (hyper's connection futures, and what its HTTP/2 client spawns)
//! runs in the measurement's [`Tasks`], which are shut down with the measurement: no
//! connection outlives it and none is shared between measurements. Requests ask for
//! `Accept-Encoding: identity`: what is counted is the body as it came over the wire.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::header::{HeaderValue, ACCEPT_ENCODING};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use lastmile_protocol::{ErrorKind, MeasurementError};
use tokio::task::JoinSet;
use url::Url;

use crate::measure::{as_http2, fail, micros, request_for, EmptyBody, Engine};

/// A connection's phases and its first answer, as the measurement reports them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct First {
    pub(crate) remote: SocketAddr,
    pub(crate) http_version: &'static str,
    pub(crate) connect_us: u64,
    pub(crate) tls_us: u64,
    pub(crate) status: Option<u16>,
    pub(crate) ttfb_us: u64,
}

/// The tasks that drive one measurement's connections (hyper's HTTP/1.1 connection
/// futures, and everything its HTTP/2 client spawns, through [`hyper::rt::Executor`]),
/// so that they are shut down with it and never outlive it.
#[derive(Clone, Default)]
pub(crate) struct Tasks(Arc<Mutex<JoinSet<()>>>);

impl Tasks {
    pub(crate) fn spawn<F>(&self, future: F)
    where
        F: Future + Send + 'static,
    {
        let mut set = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Finished tasks (closed connections, answered HTTP/2 requests) are let go of.
        while set.try_join_next().is_some() {}
        set.spawn(async move {
            let _ = future.await;
        });
    }

    /// Aborts every task and waits until each has ended (its connection closed).
    pub(crate) async fn shut_down(&self) {
        let mut set = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        set.shutdown().await;
    }
}

impl<F> hyper::rt::Executor<F> for Tasks
where
    F: Future + Send + 'static,
{
    fn execute(&self, future: F) {
        self.spawn(future);
    }
}

/// Opens the measurement's connections, all to the addresses the host resolved to
/// once and the guard let through.
pub(crate) struct Dialer {
    pub(crate) engine: Engine,
    pub(crate) https: bool,
    pub(crate) host: String,
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) tasks: Tasks,
}

impl Dialer {
    /// A new connection: TCP, TLS with ALPN, and the HTTP handshake ALPN calls for.
    pub(crate) async fn open(&self) -> Result<Conn, MeasurementError> {
        let began = Instant::now();
        let (stream, remote) = self.engine.connect(&self.addrs).await?;
        let connected = Instant::now();
        let connect_us = micros(connected.saturating_duration_since(began));
        if !self.https {
            let sender = self.http1(stream).await?;
            return Ok(Conn {
                sender,
                remote,
                connect_us,
                tls_us: 0,
            });
        }
        let tls = self.engine.tls_handshake(&self.host, stream).await?;
        let tls_us = micros(connected.elapsed());
        let sender = if tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()) {
            self.http2(tls).await?
        } else {
            self.http1(tls).await?
        };
        Ok(Conn {
            sender,
            remote,
            connect_us,
            tls_us,
        })
    }

    async fn http1<S>(&self, io: S) -> Result<Sender, MeasurementError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // 64 KiB reads, as the engine's own fetches: a full socket drains in few reads.
        let (sender, connection) = http1::Builder::new()
            .read_buf_exact_size(Some(64 * 1024))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| fail(ErrorKind::Http, format!("HTTP handshake failed: {e}")))?;
        self.tasks.spawn(connection);
        Ok(Sender::Http1(sender))
    }

    async fn http2<S>(&self, io: S) -> Result<Sender, MeasurementError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // Flow-control windows that grow with the measured bandwidth-delay product, so
        // HTTP/2 does not hold a long fat line below what its TCP connection carries.
        let (sender, connection) = http2::Builder::new(self.tasks.clone())
            .adaptive_window(true)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| fail(ErrorKind::Http, format!("HTTP/2 handshake failed: {e}")))?;
        self.tasks.spawn(connection);
        Ok(Sender::Http2(sender))
    }
}

pub(crate) enum Sender {
    Http1(http1::SendRequest<EmptyBody>),
    Http2(http2::SendRequest<EmptyBody>),
}

/// One open connection, kept alive from request to request.
pub(crate) struct Conn {
    pub(crate) sender: Sender,
    pub(crate) remote: SocketAddr,
    pub(crate) connect_us: u64,
    pub(crate) tls_us: u64,
}

impl Conn {
    /// Waits until it can carry a request; `false` once the server closed it.
    pub(crate) async fn ready(&mut self) -> bool {
        match &mut self.sender {
            Sender::Http1(s) => s.ready().await.is_ok(),
            Sender::Http2(s) => s.ready().await.is_ok(),
        }
    }

    /// The engine's request for `url` with `method`, for this connection's HTTP
    /// version, asking for the body as it is (its wire size is what is counted).
    pub(crate) fn request(
        &self,
        url: &Url,
        method: Method,
    ) -> Result<Request<EmptyBody>, MeasurementError> {
        let mut request = request_for(url)?;
        *request.method_mut() = method;
        request
            .headers_mut()
            .insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        if let Sender::Http2(_) = self.sender {
            as_http2(&mut request, url)?;
        }
        Ok(request)
    }

    /// Sends `request`; the response head and the time from sending to it, µs.
    pub(crate) async fn exchange(
        &mut self,
        request: Request<EmptyBody>,
    ) -> Result<(Response<Incoming>, u64), MeasurementError> {
        let sent = Instant::now();
        let response = match &mut self.sender {
            Sender::Http1(s) => s.send_request(request).await,
            Sender::Http2(s) => s.send_request(request).await,
        }
        .map_err(|e| fail(ErrorKind::Http, format!("no response: {e}")))?;
        Ok((response, micros(sent.elapsed())))
    }

    pub(crate) fn first(&self, status: Option<u16>, ttfb_us: u64) -> First {
        First {
            remote: self.remote,
            http_version: match self.sender {
                Sender::Http1(_) => "1.1",
                Sender::Http2(_) => "2",
            },
            connect_us: self.connect_us,
            tls_us: self.tls_us,
            status,
            ttfb_us,
        }
    }
}
