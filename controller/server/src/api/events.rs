//! Server-Sent Events: a check's results and incidents as they happen
//! (`lastmile_domain::live`).

use std::time::{Duration, Instant};

use actix_web::{get, web, HttpRequest, HttpResponse};
use lastmile_protocol::ApiError;
use uuid::Uuid;

use super::auth::AuthOwner;
use crate::api::error::Failure;
use crate::state::AppState;
use lastmile_domain::clock;
use lastmile_domain::live::{self, Cursor, MAX_STREAM_S};

/// How often a stream looks for new events.
const POLL: Duration = Duration::from_secs(1);

/// A comment line this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Follow one of your checks: `text/event-stream` of `result` events (each result as it
/// is stored, shaped as in a run's results, with its `run_id`) and `incident` events
/// (each opening, change and resolution). Every event has an `id`; reconnect with
/// `Last-Event-ID` (browsers' `EventSource` does) to resume without missing or repeating
/// one. A stream ends after an hour; reconnect to go on.
#[utoipa::path(get, path = "/api/v1/checks/{id}/events", tag = "checks",
    params(("id" = Uuid, Path, description = "The check's id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    security(("owner_token" = [])),
    responses((status = 200, description = "Server-Sent Events: `event: result` and `event: incident`, JSON `data`", content_type = "text/event-stream", body = String),
        (status = 404, body = ApiError)))]
#[get("/checks/{id}/events")]
pub async fn check_events(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    id: web::Path<Uuid>,
    req: HttpRequest,
) -> Result<HttpResponse, Failure> {
    let check_id = id.to_string();
    let known = check_id.clone();
    state
        .db
        .run(move |c| lastmile_domain::checks::get(c, &owner.id, &known))
        .await?;
    let cursor = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(Cursor::parse)
        .unwrap_or_else(|| Cursor::at(clock::now_us()));
    let follow = Follow {
        state: state.into_inner(),
        check_id,
        cursor,
        started: Instant::now(),
        last_sent: Instant::now(),
        first: true,
        done: false,
    };
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        let chunk = f.next_chunk().await?;
        Some((Ok::<_, actix_web::Error>(web::Bytes::from(chunk)), f))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-store"))
        // Proxies (nginx) must pass events on at once, not buffer them.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

struct Follow {
    state: std::sync::Arc<AppState>,
    check_id: String,
    cursor: Cursor,
    started: Instant,
    last_sent: Instant,
    first: bool,
    done: bool,
}

impl Follow {
    /// The next bytes to send: waits for events (a poll a second), a keep-alive comment,
    /// or the stream's end (`None`).
    async fn next_chunk(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        if self.first {
            self.first = false;
            // The reconnection delay, and bytes at once so the client sees the stream open.
            return Some("retry: 2000\n: following\n\n".into());
        }
        loop {
            if self.started.elapsed() >= Duration::from_secs(MAX_STREAM_S) {
                self.done = true;
                return Some(": reconnect with Last-Event-ID to go on\n\n".into());
            }
            let (check, cursor) = (self.check_id.clone(), self.cursor.clone());
            let polled = self
                .state
                .db
                .run(move |c| live::since(c, &check, &cursor))
                .await;
            match polled {
                Ok(events) if !events.is_empty() => {
                    let mut out = String::new();
                    for (event, after) in events {
                        let data = serde_json::to_string(&event).unwrap_or_default();
                        out.push_str(&format!(
                            "id: {}\nevent: {}\ndata: {data}\n\n",
                            after.event_id(),
                            event.name()
                        ));
                        self.cursor = after;
                    }
                    self.last_sent = Instant::now();
                    return Some(out);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(check = %self.check_id, error = %e, "event stream poll failed");
                    self.done = true;
                    return Some("event: error\ndata: {\"error\":\"internal\"}\n\n".into());
                }
            }
            if self.last_sent.elapsed() >= KEEP_ALIVE {
                self.last_sent = Instant::now();
                return Some(": keep-alive\n\n".into());
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
