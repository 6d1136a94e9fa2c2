//! A receiver of alert webhooks for the tests and the demo: an HTTP endpoint on a
//! loopback port that keeps every POST it gets (path, headers, body) and answers each
//! with the next status of its path's script (200 once the script is used up), so that a test
//! can make the first attempts fail and watch the retries.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: String,
    /// The status it was answered with.
    pub answered: u16,
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    /// Statuses to answer, per path.
    script: BTreeMap<String, VecDeque<u16>>,
}

/// The receiver; stops when dropped.
pub struct HookReceiver {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    handle: actix_web::dev::ServerHandle,
}

async fn receive(
    request: HttpRequest,
    body: web::Bytes,
    inner: web::Data<Mutex<Inner>>,
) -> HttpResponse {
    let Ok(mut inner) = inner.lock() else {
        return HttpResponse::InternalServerError().finish();
    };
    let status = inner
        .script
        .get_mut(request.path())
        .and_then(VecDeque::pop_front)
        .unwrap_or(200);
    let headers = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    inner.received.push(Received {
        path: request.path().to_owned(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        answered: status,
    });
    let code =
        actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::OK);
    HttpResponse::build(code).body("ok")
}

impl HookReceiver {
    /// Starts a receiver on an ephemeral loopback port.
    pub async fn start() -> std::io::Result<HookReceiver> {
        let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Mutex::new(Inner::default()));
        let data = web::Data::from(inner.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::post().to(receive))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(HookReceiver {
            addr,
            inner,
            handle,
        })
    }

    /// The URL of `path` on the receiver (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers the next requests to `path` with `statuses`, in order, then 200 again.
    pub fn answer_next(&self, path: &str, statuses: &[u16]) {
        if let Ok(mut inner) = self.inner.lock() {
            inner
                .script
                .entry(path.to_owned())
                .or_default()
                .extend(statuses);
        }
    }

    /// Everything received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.inner
            .lock()
            .map(|i| i.received.clone())
            .unwrap_or_default()
    }

    /// Waits (at most `timeout`) until `done` holds for what was received; returns it.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let got = self.received();
            if done(&got) || start.elapsed() > timeout {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for HookReceiver {
    fn drop(&mut self) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(self.handle.stop(false));
        }
    }
}
