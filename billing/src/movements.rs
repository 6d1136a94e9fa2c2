//! The movements of money the product makes, each as one balanced transaction with
//! the event key that makes it happen at most once.
//!
//! | movement | postings | event key |
//! | --- | --- | --- |
//! | [`purchase`] (card payment) | stripe_clearing -, owner_credit + | `purchase:<payment id>` |
//! | [`grant`] (operator gives test credit) | operator_grants -, owner_credit + | `grant:<grant id>` |
//! | [`pay_result`] (an accepted result) | owner_credit - price, volunteer_earnings + (price - fee), platform_revenue + fee | `result:<assignment id>` |
//! | [`payout_started`] | volunteer_earnings -, payouts_in_transit + | `payout:<id>:start` |
//! | [`payout_completed`] | payouts_in_transit -, stripe_clearing + | `payout:<id>:settle` |
//! | [`payout_failed`] (earnings restored) | payouts_in_transit -, volunteer_earnings + | `payout:<id>:settle` |
//! | [`payout_reversed`] (a completed transfer pulled back; earnings restored) | stripe_clearing -, volunteer_earnings + | `payout:<id>:reversal` |
//!
//! A payout's completion and failure share one key, so a payout settles once: the
//! second outcome, whichever it is, returns the first. Floors then do the rest: a
//! payout cannot take more than the volunteer has earned, nor settle more than is in
//! transit.

use crate::ledger::{Account, AccountKind, NewTransaction, Posting};
use crate::money::Money;
use crate::pricing;

fn posting(account: Account, amount_minor: i64) -> Posting {
    Posting {
        account,
        amount_minor,
    }
}

/// `amount` taken from `from` and put in `to`: the shape of every movement but a
/// result's payment.
fn transfer(
    event_key: String,
    kind: &'static str,
    memo: String,
    from: Account,
    to: Account,
    amount: Money,
) -> NewTransaction {
    NewTransaction {
        event_key,
        kind,
        memo,
        postings: vec![posting(from, -amount.minor), posting(to, amount.minor)],
    }
}

/// An owner bought `amount` of credit by card; `payment_id` is Stripe's id for it.
pub fn purchase(owner_id: &str, amount: Money, payment_id: &str) -> NewTransaction {
    transfer(
        format!("purchase:{payment_id}"),
        "purchase",
        format!("owner {owner_id} bought {amount} of credit"),
        Account::platform(AccountKind::StripeClearing, amount.currency),
        Account::owner_credit(owner_id, amount.currency),
        amount,
    )
}

/// An operator granted `amount` of test credit; `grant_id` names the grant (a
/// repeated grant with the same id is a no-op).
pub fn grant(owner_id: &str, amount: Money, grant_id: &str) -> NewTransaction {
    transfer(
        format!("grant:{grant_id}"),
        "grant",
        format!("operator granted owner {owner_id} {amount} of credit"),
        Account::platform(AccountKind::OperatorGrants, amount.currency),
        Account::owner_credit(owner_id, amount.currency),
        amount,
    )
}

/// The owner pays `price` for the result of assignment `assignment_id`, measured by
/// the volunteer's agent: the volunteer earns the price less the platform fee.
pub fn pay_result(
    owner_id: &str,
    volunteer_id: &str,
    price: Money,
    assignment_id: &str,
) -> NewTransaction {
    let (earned, fee) = pricing::split(price);
    let mut postings = vec![posting(
        Account::owner_credit(owner_id, price.currency),
        -price.minor,
    )];
    if earned.minor != 0 {
        postings.push(posting(
            Account::volunteer_earnings(volunteer_id, price.currency),
            earned.minor,
        ));
    }
    if fee.minor != 0 {
        postings.push(posting(
            Account::platform(AccountKind::PlatformRevenue, price.currency),
            fee.minor,
        ));
    }
    NewTransaction {
        event_key: format!("result:{assignment_id}"),
        kind: "result",
        memo: format!("result of assignment {assignment_id}: {price}"),
        postings,
    }
}

/// The event key of an assignment's payment.
pub fn result_event_key(assignment_id: &str) -> String {
    format!("result:{assignment_id}")
}

/// A payout of `amount` to the volunteer was sent to Stripe.
pub fn payout_started(volunteer_id: &str, amount: Money, payout_id: &str) -> NewTransaction {
    transfer(
        format!("payout:{payout_id}:start"),
        "payout_started",
        format!("payout {payout_id} of {amount} to volunteer {volunteer_id} sent"),
        Account::volunteer_earnings(volunteer_id, amount.currency),
        Account::payouts_in_transit(volunteer_id, amount.currency),
        amount,
    )
}

/// The payout arrived: the money has left the platform's Stripe balance.
pub fn payout_completed(volunteer_id: &str, amount: Money, payout_id: &str) -> NewTransaction {
    transfer(
        format!("payout:{payout_id}:settle"),
        "payout_completed",
        format!("payout {payout_id} of {amount} to volunteer {volunteer_id} completed"),
        Account::payouts_in_transit(volunteer_id, amount.currency),
        Account::platform(AccountKind::StripeClearing, amount.currency),
        amount,
    )
}

/// The payout failed: the money goes back to the volunteer's earnings.
pub fn payout_failed(volunteer_id: &str, amount: Money, payout_id: &str) -> NewTransaction {
    transfer(
        format!("payout:{payout_id}:settle"),
        "payout_failed",
        format!("payout {payout_id} of {amount} to volunteer {volunteer_id} failed"),
        Account::payouts_in_transit(volunteer_id, amount.currency),
        Account::volunteer_earnings(volunteer_id, amount.currency),
        amount,
    )
}

/// A completed payout's transfer was reversed: the money came back to the platform's
/// Stripe balance and the volunteer's earnings are restored.
pub fn payout_reversed(volunteer_id: &str, amount: Money, payout_id: &str) -> NewTransaction {
    transfer(
        format!("payout:{payout_id}:reversal"),
        "payout_reversed",
        format!("payout {payout_id} of {amount} to volunteer {volunteer_id} reversed"),
        Account::platform(AccountKind::StripeClearing, amount.currency),
        Account::volunteer_earnings(volunteer_id, amount.currency),
        amount,
    )
}
