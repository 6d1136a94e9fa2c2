//! Buying credit from the dashboard: the form on the checks page opens a Stripe
//! Checkout session through `payments` (as `POST /api/v1/owner/credit/checkout` does)
//! and sends the browser to Stripe's page. The credit itself arrives only by the
//! signed webhook.

use crate::http_status::HttpStatus;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use lastmile_dashboard::checks::Credit;
use serde::Deserialize;

use lastmile_domain::payments::{self, NewCheckout, MAX_PURCHASE_MINOR, MIN_PURCHASE_MINOR};

use super::checks::render_list;
use super::error::PageError;
use super::see_other;
use super::session::{CsrfForm, SignedInOwner};
use crate::state::AppState;

#[derive(Deserialize)]
pub struct BuyFields {
    #[serde(default)]
    amount: String,
}

/// "25", "25.5", "$1,000.00" as cents; `None` unless it is a plain amount of dollars
/// with at most two decimals.
fn cents(dollars: &str) -> Option<i64> {
    let s: String = dollars
        .trim()
        .trim_start_matches('$')
        .chars()
        .filter(|c| *c != ',' && *c != ' ')
        .collect();
    let (whole, frac) = s.split_once('.').unwrap_or((&s, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || whole.len() > 9 || frac.len() > 2 || !digits(whole) || !digits(frac) {
        return None;
    }
    let frac: i64 = format!("{frac:0<2}").parse().ok()?;
    Some(whole.parse::<i64>().ok()? * 100 + frac)
}

pub async fn buy(
    req: HttpRequest,
    user: SignedInOwner,
    state: web::Data<AppState>,
    CsrfForm(form): CsrfForm<BuyFields>,
) -> Result<HttpResponse, PageError> {
    let refused = |status: StatusCode, why: String| {
        let credit = Credit {
            error: Some(why),
            amount: form.amount.clone(),
            ..Credit::default()
        };
        render_list(&user, &state, credit, status)
    };
    let usd = lastmile_billing::pricing::PRICE_CURRENCY;
    let amount_minor = match cents(&form.amount) {
        Some(c) if (MIN_PURCHASE_MINOR..=MAX_PURCHASE_MINOR).contains(&c) => c,
        _ => {
            let why = format!(
                "Enter an amount in dollars from {} to {}, like 25 or 25.50 (you entered \u{201c}{}\u{201d}).",
                super::money(MIN_PURCHASE_MINOR, usd.as_str()),
                super::money(MAX_PURCHASE_MINOR, usd.as_str()),
                form.amount.trim()
            );
            return refused(StatusCode::UNPROCESSABLE_ENTITY, why).await;
        }
    };
    let request = NewCheckout {
        amount_minor,
        currency: usd.to_string(),
    };
    let base = payments::return_base(
        &state.config.stripe,
        &super::volunteers::controller_url(&req),
    );
    match payments::start_checkout(
        &state.db,
        state.stripe.as_deref(),
        &user.owner_id,
        &request,
        &base,
    )
    .await
    {
        Ok(session) => Ok(see_other(&session.url)),
        Err(e) => {
            let why = format!("Could not start the payment: {e}");
            refused(e.status_code(), why).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cents;

    #[test]
    fn dollars_as_people_type_them_become_cents() {
        assert_eq!(cents("25"), Some(2_500));
        assert_eq!(cents(" $25.5 "), Some(2_550));
        assert_eq!(cents("1,000.05"), Some(100_005));
        assert_eq!(cents("0.07"), Some(7));
        for bad in ["", "abc", "-5", "5.123", ".5x", "1e3", "5,00.0.0"] {
            assert_eq!(cents(bad), None, "{bad}");
        }
    }
}
