//! A stateful stand-in for Stripe's API, for the demo and the tests (Stripe itself is
//! out of reach here). It is the one fake the project allows, so it speaks Stripe's
//! real wire format and the controller talks to it through the real `async-stripe`
//! client, only pointed at another base URL:
//!
//! - requests are `application/x-www-form-urlencoded` with Stripe's bracket keys
//!   (`metadata[payout_id]=...`, `line_items[0][price_data][unit_amount]=...`),
//!   authenticated by `Authorization: Bearer <secret key>`;
//! - answers are JSON objects with `id` and `object`, and failures Stripe's error
//!   envelope `{"error": {"type", "code", "message", "param"}}` with Stripe's statuses;
//! - `Idempotency-Key` works as Stripe's does: the same key with the same parameters
//!   replays the stored answer (header `Idempotent-Replayed: true`) and has no second
//!   effect; the same key with other parameters is a 400 `idempotency_error`;
//! - webhooks are signed as Stripe signs them:
//!   `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<payload>")>`.
//!
//! Only the endpoints Lastmile uses exist: Checkout Sessions (create, retrieve),
//! Accounts (create `type=express`, retrieve), Account Links (create) and Transfers
//! (create, retrieve). The fake counts its effects ([`FakeStripe::transfers`]) so
//! that a test can show money moved exactly once, and has hooks for what only Stripe
//! or a customer could do: pay a Checkout session, finish Connect onboarding, reverse
//! a transfer (each delivering the signed event to the webhook URL), fail the next
//! transfer, or apply the next transfer and then answer too late for the client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;

/// What the next `POST /v1/transfers` does instead of succeeding plainly.
#[derive(Debug, Clone)]
enum TransferFault {
    /// Refuse it with a Stripe error (400, `invalid_request_error`, this code).
    Fail { code: String, message: String },
    /// Create the transfer, store the answer under the idempotency key, then hold the
    /// answer back this long (the client times out although the money moved).
    AnswerLate(Duration),
}

/// A stored idempotent answer.
struct Stored {
    fingerprint: String,
    status: u16,
    body: Value,
}

#[derive(Default)]
struct State {
    webhook_url: Option<String>,
    sessions: HashMap<String, Value>,
    accounts: HashMap<String, Value>,
    /// Each account's latest Account Link `return_url`: where finishing onboarding
    /// sends the browser, as Stripe does.
    link_returns: HashMap<String, String>,
    /// Transfers in creation order.
    transfers: Vec<Value>,
    events: HashMap<String, Value>,
    idempotency: HashMap<String, Stored>,
    next_transfer: Option<TransferFault>,
    /// How many answers were replays of a stored idempotent answer.
    replays: u64,
}

struct Inner {
    secret_key: String,
    webhook_secret: String,
    base: String,
    state: Mutex<State>,
    http: reqwest::Client,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not take every later call down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running fake Stripe. Dropping it stops the server.
pub struct FakeStripe {
    addr: SocketAddr,
    inner: Arc<Inner>,
    handle: actix_web::dev::ServerHandle,
}

/// What delivering an event to the webhook URL gave.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event's id (`evt_...`).
    pub event_id: String,
    /// The HTTP status the webhook endpoint answered.
    pub status: u16,
    /// Its body, for test messages.
    pub body: String,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// The `Stripe-Signature` header Stripe sends with `payload` at unix time `t`.
pub fn signature_header(webhook_secret: &str, t: i64, payload: &str) -> String {
    format!("t={t},v1={}", sign(webhook_secret, t, payload))
}

/// Hex HMAC-SHA256 of `"<t>.<payload>"` under the endpoint's signing secret.
pub fn sign(webhook_secret: &str, t: i64, payload: &str) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(webhook_secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

impl FakeStripe {
    /// Starts the fake on an ephemeral loopback port. It accepts `secret_key` as the
    /// API key and signs webhooks with `webhook_secret`.
    pub async fn start(secret_key: &str, webhook_secret: &str) -> std::io::Result<FakeStripe> {
        let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(std::io::Error::other)?;
        let inner = Arc::new(Inner {
            secret_key: secret_key.to_owned(),
            webhook_secret: webhook_secret.to_owned(),
            base: format!("http://{addr}"),
            state: Mutex::new(State::default()),
            http,
        });
        let data = web::Data::from(inner.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(1024 * 1024))
                .route("/v1/checkout/sessions", web::post().to(create_session))
                .route(
                    "/v1/checkout/sessions/{id}",
                    web::get().to(retrieve_session),
                )
                .route("/v1/accounts", web::post().to(create_account))
                .route("/v1/accounts/{id}", web::get().to(retrieve_account))
                .route("/v1/account_links", web::post().to(create_account_link))
                .route("/v1/transfers", web::post().to(create_transfer))
                .route("/v1/transfers/{id}", web::get().to(retrieve_transfer))
                .route("/pay/{id}", web::get().to(checkout_page))
                .route("/pay/{id}", web::post().to(checkout_pay))
                .route("/connect/onboarding/{id}", web::get().to(onboarding_page))
                .route("/connect/onboarding/{id}", web::post().to(onboarding_done))
                .default_service(web::to(unknown_url))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(FakeStripe {
            addr,
            inner,
            handle,
        })
    }

    /// The API base URL to configure the client with (`http://127.0.0.1:PORT/`).
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Where events are delivered (the controller's `/api/v1/stripe/webhook`).
    pub fn set_webhook_url(&self, url: &str) {
        self.inner.state().webhook_url = Some(url.to_owned());
    }

    /// Every transfer created, in order (each a Stripe `transfer` object).
    pub fn transfers(&self) -> Vec<Value> {
        self.inner.state().transfers.clone()
    }

    /// How many Connect accounts were created.
    pub fn accounts_created(&self) -> usize {
        self.inner.state().accounts.len()
    }

    /// How many Checkout sessions were created.
    pub fn sessions_created(&self) -> usize {
        self.inner.state().sessions.len()
    }

    /// How many answers were replays of a stored idempotent answer.
    pub fn idempotent_replays(&self) -> u64 {
        self.inner.state().replays
    }

    /// A stored Checkout session.
    pub fn session(&self, id: &str) -> Option<Value> {
        self.inner.state().sessions.get(id).cloned()
    }

    /// The JSON payload of an event, exactly as it is delivered.
    pub fn event_payload(&self, event_id: &str) -> Option<String> {
        self.inner
            .state()
            .events
            .get(event_id)
            .map(|e| e.to_string())
    }

    /// The next transfer is refused with a Stripe error carrying `code`.
    pub fn fail_next_transfer(&self, code: &str, message: &str) {
        self.inner.state().next_transfer = Some(TransferFault::Fail {
            code: code.to_owned(),
            message: message.to_owned(),
        });
    }

    /// The next transfer is made (and its answer stored under its idempotency key),
    /// but the answer is sent only after `delay`: a client with a shorter timeout
    /// sees a network failure although the money moved.
    pub fn answer_next_transfer_late(&self, delay: Duration) {
        self.inner.state().next_transfer = Some(TransferFault::AnswerLate(delay));
    }

    /// The customer pays the Checkout session (it becomes `complete`/`paid`) and the
    /// `checkout.session.completed` event is recorded but not delivered; its id is
    /// returned (see [`FakeStripe::deliver`], [`FakeStripe::event_payload`]).
    pub fn pay_checkout(&self, session_id: &str) -> std::io::Result<String> {
        self.inner.complete_checkout(session_id)
    }

    /// The customer pays the Checkout session: it becomes `complete`/`paid` and the
    /// signed `checkout.session.completed` event is delivered once.
    pub async fn complete_checkout(&self, session_id: &str) -> std::io::Result<Delivery> {
        let event_id = self.inner.complete_checkout(session_id)?;
        self.deliver(&event_id).await
    }

    /// The volunteer finishes Connect onboarding: payouts become enabled and the
    /// signed `account.updated` event is delivered once.
    pub async fn complete_onboarding(&self, account_id: &str) -> std::io::Result<Delivery> {
        let event_id = self.inner.complete_onboarding(account_id)?;
        self.deliver(&event_id).await
    }

    /// The platform (or Stripe) reverses a transfer in full: the signed
    /// `transfer.reversed` event is delivered once.
    pub async fn reverse_transfer(&self, transfer_id: &str) -> std::io::Result<Delivery> {
        let event_id = {
            let mut st = self.inner.state();
            let transfer = st
                .transfers
                .iter_mut()
                .find(|t| t["id"] == transfer_id)
                .ok_or_else(|| std::io::Error::other(format!("no transfer {transfer_id}")))?;
            let amount = transfer["amount"].clone();
            let reversal = json!({
                "id": new_id("trr"), "object": "transfer_reversal", "amount": amount,
                "balance_transaction": null, "created": now(), "currency": transfer["currency"],
                "destination_payment_refund": null, "metadata": {}, "source_refund": null,
                "transfer": transfer_id,
            });
            transfer["amount_reversed"] = amount;
            transfer["reversed"] = json!(true);
            transfer["reversals"]["data"] = json!([reversal]);
            transfer["reversals"]["total_count"] = json!(1);
            let object = transfer.clone();
            emit(&mut st, "transfer.reversed", object)
        };
        self.deliver(&event_id).await
    }

    /// Delivers a stored event (again) to the webhook URL, freshly signed, as Stripe
    /// does when it retries. Safe to call many times at once.
    pub async fn deliver(&self, event_id: &str) -> std::io::Result<Delivery> {
        self.inner.deliver(event_id).await
    }
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(self.handle.stop(false));
        }
    }
}

impl Inner {
    fn complete_checkout(&self, session_id: &str) -> std::io::Result<String> {
        let mut st = self.state();
        let session = st
            .sessions
            .get_mut(session_id)
            .ok_or_else(|| std::io::Error::other(format!("no Checkout session {session_id}")))?;
        if session["status"] == "open" {
            session["status"] = json!("complete");
            session["payment_status"] = json!("paid");
            session["payment_intent"] = json!(new_id("pi"));
        }
        let object = session.clone();
        Ok(emit(&mut st, "checkout.session.completed", object))
    }

    fn complete_onboarding(&self, account_id: &str) -> std::io::Result<String> {
        let mut st = self.state();
        let account = st
            .accounts
            .get_mut(account_id)
            .ok_or_else(|| std::io::Error::other(format!("no account {account_id}")))?;
        account["details_submitted"] = json!(true);
        account["charges_enabled"] = json!(true);
        account["payouts_enabled"] = json!(true);
        account["capabilities"]["transfers"] = json!("active");
        let object = account.clone();
        Ok(emit(&mut st, "account.updated", object))
    }

    async fn deliver(&self, event_id: &str) -> std::io::Result<Delivery> {
        let (url, payload) = {
            let st = self.state();
            let url = st
                .webhook_url
                .clone()
                .ok_or_else(|| std::io::Error::other("no webhook URL set"))?;
            let event = st
                .events
                .get(event_id)
                .ok_or_else(|| std::io::Error::other(format!("no event {event_id}")))?;
            (url, event.to_string())
        };
        let header = signature_header(&self.webhook_secret, now(), &payload);
        let res = self
            .http
            .post(&url)
            .header("content-type", "application/json; charset=utf-8")
            .header(
                "user-agent",
                "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            )
            .header("stripe-signature", header)
            .body(payload)
            .send()
            .await
            .map_err(std::io::Error::other)?;
        let status = res.status().as_u16();
        let body = res.text().await.unwrap_or_default();
        Ok(Delivery {
            event_id: event_id.to_owned(),
            status,
            body,
        })
    }
}

/// Records an event about `object` and returns its id.
fn emit(st: &mut State, kind: &str, object: Value) -> String {
    let id = new_id("evt");
    st.events.insert(
        id.clone(),
        json!({
            "id": id, "object": "event", "api_version": "2025-08-27.basil", "created": now(),
            "type": kind, "livemode": false, "pending_webhooks": 1,
            "request": {"id": null, "idempotency_key": null},
            "data": {"object": object},
        }),
    );
    id
}

/// A Stripe error answer.
fn error(status: u16, kind: &str, code: Option<&str>, message: &str, param: Option<&str>) -> Reply {
    let mut e = Map::new();
    e.insert("type".into(), json!(kind));
    e.insert("message".into(), json!(message));
    if let Some(c) = code {
        e.insert("code".into(), json!(c));
    }
    if let Some(p) = param {
        e.insert("param".into(), json!(p));
    }
    Reply {
        status,
        body: json!({ "error": e }),
        delay: None,
    }
}

fn missing(param: &str) -> Reply {
    error(
        400,
        "invalid_request_error",
        Some("parameter_missing"),
        &format!("Missing required param: {param}."),
        Some(param),
    )
}

fn no_such(what: &str, id: &str, param: &str) -> Reply {
    error(
        404,
        "invalid_request_error",
        Some("resource_missing"),
        &format!("No such {what}: '{id}'"),
        Some(param),
    )
}

/// An answer: status, JSON body, and how long to hold it back.
struct Reply {
    status: u16,
    body: Value,
    delay: Option<Duration>,
}

impl Reply {
    fn ok(body: Value) -> Reply {
        Reply {
            status: 200,
            body,
            delay: None,
        }
    }
}

/// Form parameters, decoded (`metadata[payout_id]` stays one key).
struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `metadata[...]` pairs as a JSON object.
    fn metadata(&self) -> Value {
        let mut m = Map::new();
        for (k, v) in &self.0 {
            if let Some(name) = k
                .strip_prefix("metadata[")
                .and_then(|r| r.strip_suffix(']'))
            {
                m.insert(name.to_owned(), json!(v));
            }
        }
        Value::Object(m)
    }

    fn amount(&self, key: &str) -> Result<i64, Reply> {
        let raw = self.get(key).ok_or_else(|| missing(key))?;
        match raw.parse::<i64>() {
            Ok(a) if a > 0 => Ok(a),
            _ => Err(error(
                400,
                "invalid_request_error",
                Some("parameter_invalid_integer"),
                &format!("Invalid positive integer: {key}={raw}"),
                Some(key),
            )),
        }
    }
}

fn authorized(inner: &Inner, req: &HttpRequest) -> Result<(), Reply> {
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(key) if key == inner.secret_key => Ok(()),
        Some(_) => Err(error(
            401,
            "invalid_request_error",
            Some("api_key_invalid"),
            "Invalid API Key provided.",
            None,
        )),
        None => Err(error(
            401,
            "invalid_request_error",
            None,
            "You did not provide an API key. Provide it in the Authorization header (Bearer auth).",
            None,
        )),
    }
}

async fn respond(reply: Reply, replayed: bool) -> HttpResponse {
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    let mut res = HttpResponse::build(
        actix_web::http::StatusCode::from_u16(reply.status)
            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR),
    );
    res.insert_header(("request-id", new_id("req")));
    if replayed {
        res.insert_header(("idempotent-replayed", "true"));
    }
    res.json(reply.body)
}

/// A POST the way Stripe handles it: authenticate, parse the form, honour the
/// idempotency key, apply `op` under the state lock, store its answer (unless it is a
/// 5xx, which Stripe does not store) for replays.
async fn post(
    inner: &Inner,
    req: &HttpRequest,
    body: &[u8],
    op: impl FnOnce(&Inner, &mut State, &Params) -> Reply,
) -> HttpResponse {
    if let Err(reply) = authorized(inner, req) {
        return respond(reply, false).await;
    }
    let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let params = Params(pairs.clone());
    pairs.sort();
    let fingerprint = format!("{} {} {:?}", req.method(), req.path(), pairs);
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (reply, replayed) = {
        let mut st = inner.state();
        match key.as_ref().and_then(|k| st.idempotency.get(k)) {
            Some(stored) if stored.fingerprint != fingerprint => (
                error(
                    400,
                    "idempotency_error",
                    None,
                    "Keys for idempotent requests can only be used with the same parameters they \
                     were first used with. Try using a key other than the one used in the \
                     original request.",
                    None,
                ),
                false,
            ),
            Some(stored) => {
                let reply = Reply {
                    status: stored.status,
                    body: stored.body.clone(),
                    delay: None,
                };
                st.replays += 1;
                (reply, true)
            }
            None => {
                let reply = op(inner, &mut st, &params);
                if let Some(k) = key {
                    if reply.status < 500 {
                        st.idempotency.insert(
                            k,
                            Stored {
                                fingerprint,
                                status: reply.status,
                                body: reply.body.clone(),
                            },
                        );
                    }
                }
                (reply, false)
            }
        }
    };
    respond(reply, replayed).await
}

async fn get(inner: &Inner, req: &HttpRequest, op: impl FnOnce(&State) -> Reply) -> HttpResponse {
    if let Err(reply) = authorized(inner, req) {
        return respond(reply, false).await;
    }
    let reply = op(&inner.state());
    respond(reply, false).await
}

async fn create_session(
    inner: web::Data<Inner>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    post(&inner, &req, &body, |inner, st, p| {
        if p.get("mode") != Some("payment") {
            return missing("mode");
        }
        let Some(success_url) = p.get("success_url") else {
            return missing("success_url");
        };
        let currency = match p.get("line_items[0][price_data][currency]") {
            Some(c) => c.to_ascii_lowercase(),
            None => return missing("line_items[0][price_data][currency]"),
        };
        let unit = match p.amount("line_items[0][price_data][unit_amount]") {
            Ok(a) => a,
            Err(e) => return e,
        };
        let quantity = p
            .get("line_items[0][quantity]")
            .and_then(|q| q.parse::<i64>().ok())
            .unwrap_or(1);
        let amount = unit * quantity;
        // Stripe's minimum charge in usd is 50 cents.
        if amount < 50 {
            return error(
                400,
                "invalid_request_error",
                Some("amount_too_small"),
                "The Checkout Session's total amount due must add up to at least $0.50 usd",
                None,
            );
        }
        let id = new_id("cs_test");
        let created = now();
        let session = json!({
            "id": id, "object": "checkout.session",
            "amount_subtotal": amount, "amount_total": amount,
            "automatic_tax": {"enabled": false, "liability": null, "status": null},
            "cancel_url": p.get("cancel_url"),
            "client_reference_id": p.get("client_reference_id"),
            "created": created, "currency": currency,
            "custom_fields": [],
            "custom_text": {"after_submit": null, "shipping_address": null, "submit": null,
                            "terms_of_service_acceptance": null},
            "customer": null, "expires_at": created + 24 * 3600, "livemode": false,
            "metadata": p.metadata(), "mode": "payment", "payment_intent": null,
            "payment_method_types": ["card"], "payment_status": "unpaid",
            "shipping_options": [], "status": "open", "success_url": success_url,
            "url": format!("{}/pay/{id}", inner.base),
        });
        st.sessions.insert(id, session.clone());
        Reply::ok(session)
    })
    .await
}

async fn retrieve_session(
    inner: web::Data<Inner>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    get(&inner, &req, |st| match st.sessions.get(path.as_str()) {
        Some(s) => Reply::ok(s.clone()),
        None => no_such("checkout.session", &path, "session"),
    })
    .await
}

async fn create_account(
    inner: web::Data<Inner>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    post(&inner, &req, &body, |_, st, p| {
        match p.get("type") {
            Some("express") => {}
            Some(other) => {
                return error(
                    400,
                    "invalid_request_error",
                    Some("parameter_invalid"),
                    &format!("This fake only creates express accounts, not {other}"),
                    Some("type"),
                )
            }
            None => return missing("type"),
        }
        let id = new_id("acct");
        let account = json!({
            "id": id, "object": "account", "type": "express",
            "country": p.get("country").unwrap_or("US"), "email": p.get("email"),
            "created": now(), "default_currency": "usd",
            "charges_enabled": false, "payouts_enabled": false, "details_submitted": false,
            "capabilities": {"transfers": "inactive"},
            "metadata": p.metadata(),
        });
        st.accounts.insert(id, account.clone());
        Reply::ok(account)
    })
    .await
}

async fn retrieve_account(
    inner: web::Data<Inner>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    get(&inner, &req, |st| match st.accounts.get(path.as_str()) {
        Some(a) => Reply::ok(a.clone()),
        None => no_such("account", &path, "account"),
    })
    .await
}

async fn create_account_link(
    inner: web::Data<Inner>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    post(&inner, &req, &body, |inner, st, p| {
        let Some(account) = p.get("account") else {
            return missing("account");
        };
        if !st.accounts.contains_key(account) {
            return no_such("account", account, "account");
        }
        for required in ["type", "return_url", "refresh_url"] {
            if p.get(required).is_none() {
                return missing(required);
            }
        }
        if let Some(back) = p.get("return_url") {
            st.link_returns.insert(account.to_owned(), back.to_owned());
        }
        let created = now();
        Reply::ok(json!({
            "object": "account_link", "created": created, "expires_at": created + 300,
            "url": format!("{}/connect/onboarding/{account}", inner.base),
        }))
    })
    .await
}

async fn create_transfer(
    inner: web::Data<Inner>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    post(&inner, &req, &body, |_, st, p| {
        let amount = match p.amount("amount") {
            Ok(a) => a,
            Err(e) => return e,
        };
        let Some(currency) = p.get("currency") else {
            return missing("currency");
        };
        let Some(destination) = p.get("destination") else {
            return missing("destination");
        };
        let Some(account) = st.accounts.get(destination) else {
            return no_such("destination", destination, "destination");
        };
        if account["payouts_enabled"] != true {
            return error(
                400,
                "invalid_request_error",
                Some("insufficient_capabilities_for_transfer"),
                "Your destination account needs to have at least one of the following \
                 capabilities enabled: transfers, crypto_transfers, legacy_payments",
                Some("destination"),
            );
        }
        let delay = match st.next_transfer.take() {
            Some(TransferFault::Fail { code, message }) => {
                return error(400, "invalid_request_error", Some(&code), &message, None)
            }
            Some(TransferFault::AnswerLate(d)) => Some(d),
            None => None,
        };
        let id = new_id("tr");
        let transfer = json!({
            "id": id, "object": "transfer", "amount": amount, "amount_reversed": 0,
            "balance_transaction": new_id("txn"), "created": now(),
            "currency": currency.to_ascii_lowercase(), "description": p.get("description"),
            "destination": destination, "destination_payment": new_id("py"),
            "livemode": false, "metadata": p.metadata(),
            "reversals": {"object": "list", "data": [], "has_more": false, "total_count": 0,
                          "url": format!("/v1/transfers/{id}/reversals")},
            "reversed": false, "source_transaction": null, "source_type": "card",
            "transfer_group": p.get("transfer_group"),
        });
        st.transfers.push(transfer.clone());
        Reply {
            status: 200,
            body: transfer,
            delay,
        }
    })
    .await
}

async fn retrieve_transfer(
    inner: web::Data<Inner>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    get(&inner, &req, |st| {
        match st.transfers.iter().find(|t| t["id"] == path.as_str()) {
            Some(t) => Reply::ok(t.clone()),
            None => no_such("transfer", &path, "id"),
        }
    })
    .await
}

/// The hosted Checkout page a browser is sent to: one button pays.
async fn checkout_page(inner: web::Data<Inner>, path: web::Path<String>) -> HttpResponse {
    let Some(session) = inner.state().sessions.get(path.as_str()).cloned() else {
        return HttpResponse::NotFound().body("no such Checkout session");
    };
    let amount = session["amount_total"].as_i64().unwrap_or(0);
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(format!(
            "<!doctype html><title>Fake Stripe Checkout</title><h1>Pay {}.{:02} {}</h1>\
         <p>Test mode: no card is charged.</p><form method=post><button>Pay</button></form>",
            amount / 100,
            amount % 100,
            session["currency"].as_str().unwrap_or("")
        ))
}

/// Paying on the hosted page: completes the session, delivers the webhook, and sends
/// the browser to the session's success URL.
async fn checkout_pay(inner: web::Data<Inner>, path: web::Path<String>) -> HttpResponse {
    let event = match inner.complete_checkout(&path) {
        Ok(e) => e,
        Err(e) => return HttpResponse::NotFound().body(e.to_string()),
    };
    if let Err(e) = inner.deliver(&event).await {
        tracing::warn!(error = %e, "fake Stripe could not deliver the webhook");
    }
    let success = inner
        .state()
        .sessions
        .get(path.as_str())
        .and_then(|s| s["success_url"].as_str().map(str::to_owned));
    HttpResponse::SeeOther()
        .insert_header(("location", success.unwrap_or_else(|| "/".into())))
        .finish()
}

/// The hosted Connect onboarding page: one button finishes onboarding.
async fn onboarding_page(inner: web::Data<Inner>, path: web::Path<String>) -> HttpResponse {
    if !inner.state().accounts.contains_key(path.as_str()) {
        return HttpResponse::NotFound().body("no such account");
    }
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(
            "<!doctype html><title>Fake Stripe Connect</title><h1>Set up payouts</h1>\
         <p>Test mode: no bank details needed.</p><form method=post><button>Finish</button></form>",
        )
}

async fn onboarding_done(inner: web::Data<Inner>, path: web::Path<String>) -> HttpResponse {
    let event = match inner.complete_onboarding(&path) {
        Ok(e) => e,
        Err(e) => return HttpResponse::NotFound().body(e.to_string()),
    };
    if let Err(e) = inner.deliver(&event).await {
        tracing::warn!(error = %e, "fake Stripe could not deliver the webhook");
    }
    let back = inner.state().link_returns.get(path.as_str()).cloned();
    match back {
        Some(url) => HttpResponse::SeeOther()
            .insert_header(("location", url))
            .finish(),
        None => HttpResponse::Ok().body("Payouts are set up; you can close this page."),
    }
}

async fn unknown_url(req: HttpRequest) -> HttpResponse {
    respond(
        error(
            404,
            "invalid_request_error",
            None,
            &format!(
                "Unrecognized request URL ({} {}).",
                req.method(),
                req.path()
            ),
            None,
        ),
        false,
    )
    .await
}
