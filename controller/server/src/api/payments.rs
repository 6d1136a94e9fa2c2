//! Stripe: owners buying credit by Checkout, Stripe's webhook, volunteers' Connect
//! onboarding and their payouts. Thin: each handler authenticates and calls one
//! function of `payments` or `payouts`.

use actix_web::{get, post, web, HttpRequest};
use lastmile_protocol::ApiError;

use crate::api::auth::{AuthOwner, AuthVolunteer};
use crate::api::error::Failure;
use crate::state::AppState;
use lastmile_domain::payments::{self, CheckoutView, NewCheckout, WebhookAck};
use lastmile_domain::payouts::{self, OnboardingView, PayoutView};

/// Buy credit: opens a Stripe Checkout session for `amount_minor` (500 to 1 000 000
/// cents of usd). Send the owner to `url`; the credit arrives when Stripe confirms the
/// payment by webhook.
#[utoipa::path(post, path = "/api/v1/owner/credit/checkout", tag = "billing", request_body = NewCheckout,
    security(("owner_token" = [])),
    responses((status = 201, body = CheckoutView), (status = 422, body = ApiError), (status = 503, body = ApiError)))]
#[post("/owner/credit/checkout")]
pub async fn checkout(
    state: web::Data<AppState>,
    req: HttpRequest,
    AuthOwner(owner): AuthOwner,
    body: web::Json<NewCheckout>,
) -> Result<actix_web::HttpResponse, Failure> {
    let base = payments::return_base(&state.config.stripe, &origin(&req));
    let view =
        payments::start_checkout(&state.db, state.stripe.as_deref(), &owner.id, &body, &base)
            .await?;
    Ok(actix_web::HttpResponse::Created().json(view))
}

/// Stripe's webhook endpoint. The body must carry a valid `Stripe-Signature`
/// (otherwise 400, nothing read). Each event takes effect once however often it is
/// delivered; types we do not use are acknowledged and ignored.
#[utoipa::path(post, path = "/api/v1/stripe/webhook", tag = "billing",
    responses((status = 200, body = WebhookAck), (status = 400, body = ApiError),
        (status = 413, content_type = "text/plain", description = "body over 256 KiB (actix's payload limit)"),
        (status = 503, body = ApiError, description = "no webhook signing secret configured")))]
#[post("/stripe/webhook")]
pub async fn webhook(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<web::Json<WebhookAck>, Failure> {
    let signature = req
        .headers()
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    Ok(web::Json(
        payments::receive_webhook(&state.db, &state.config.stripe, signature, &body).await?,
    ))
}

/// Set up payouts: creates your Stripe Connect Express account the first time and
/// returns the link to Stripe's onboarding (until payouts are enabled).
#[utoipa::path(post, path = "/api/v1/volunteer/stripe/onboarding", tag = "billing",
    security(("agent_token" = [])),
    responses((status = 200, body = OnboardingView), (status = 403, body = ApiError), (status = 503, body = ApiError)))]
#[post("/volunteer/stripe/onboarding")]
pub async fn onboarding(
    state: web::Data<AppState>,
    req: HttpRequest,
    AuthVolunteer(volunteer): AuthVolunteer,
) -> Result<web::Json<OnboardingView>, Failure> {
    let base = payments::return_base(&state.config.stripe, &origin(&req));
    Ok(web::Json(
        payouts::onboard(&state.db, state.stripe.as_deref(), &volunteer, &base).await?,
    ))
}

/// `scheme://host` the request was sent to.
pub(crate) fn origin(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

/// Your payouts, newest first, with their status (`in_transit`, `completed`,
/// `failed`, `reversed`).
#[utoipa::path(get, path = "/api/v1/volunteer/payouts", tag = "billing",
    security(("agent_token" = [])),
    responses((status = 200, body = [PayoutView]), (status = 403, body = ApiError)))]
#[get("/volunteer/payouts")]
pub async fn list_payouts(
    state: web::Data<AppState>,
    AuthVolunteer(volunteer): AuthVolunteer,
) -> Result<web::Json<Vec<PayoutView>>, Failure> {
    let list = state.db.run(move |c| payouts::list(c, &volunteer)).await?;
    Ok(web::Json(list))
}
