//! The movements of money the product makes, each as one balanced transaction with
//! the event key that makes it happen at most once.
//!
//! | movement | postings | event key |
//! | --- | --- | --- |
//! | [`purchase`] (card payment) | stripe_clearing -, owner_credit + | `purchase:<payment id>` |
//! | [`grant`] (operator gives test credit) | operator_grants -, owner_credit + | `grant:<grant id>` |
//! | [`pay_result`] (an accepted result) | owner_credit - price, volunteer_earnings + (price - fee), platform_revenue + fee | `result:<assignment id>` |
//! | [`pay_results`] (a batch of accepted results) | the same per result, summed per account | `results:<first assignment id>` |
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

/// One accepted result to pay for, in a batch ([`pay_results`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultPayment {
    pub owner_id: String,
    pub volunteer_id: String,
    pub price: Money,
    pub assignment_id: String,
}

/// The owners pay for a batch of accepted results in one transaction: each result is
/// split as [`pay_result`] splits it (so a batch moves exactly what its results would
/// one by one), and the postings are summed per account, so the platform's revenue
/// account is written once per batch rather than once per result. The event key names
/// the batch by its first assignment (callers pay each result in exactly one batch, so
/// the key is unique; a retried batch is the same event). `None` for an empty batch.
pub fn pay_results(results: &[ResultPayment]) -> Option<NewTransaction> {
    let first = results.first()?;
    let mut sums: std::collections::BTreeMap<Account, i64> = std::collections::BTreeMap::new();
    for r in results {
        let (earned, fee) = pricing::split(r.price);
        *sums
            .entry(Account::owner_credit(&r.owner_id, r.price.currency))
            .or_default() -= r.price.minor;
        *sums
            .entry(Account::volunteer_earnings(
                &r.volunteer_id,
                r.price.currency,
            ))
            .or_default() += earned.minor;
        *sums
            .entry(Account::platform(
                AccountKind::PlatformRevenue,
                r.price.currency,
            ))
            .or_default() += fee.minor;
    }
    let total: i64 = results.iter().map(|r| r.price.minor).sum();
    Some(NewTransaction {
        event_key: format!("results:{}", first.assignment_id),
        kind: "result",
        memo: format!(
            "{} results, from assignment {}: {total} minor units",
            results.len(),
            first.assignment_id
        ),
        postings: sums
            .into_iter()
            .filter(|(_, amount)| *amount != 0)
            .map(|(account, amount_minor)| posting(account, amount_minor))
            .collect(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::validate;
    use crate::money::Currency;

    fn result(owner: &str, volunteer: &str, minor: i64, assignment: &str) -> ResultPayment {
        ResultPayment {
            owner_id: owner.into(),
            volunteer_id: volunteer.into(),
            price: Money::new(minor, Currency::USD),
            assignment_id: assignment.into(),
        }
    }

    /// The sum per account of the postings of `txs`.
    fn moved(txs: &[NewTransaction]) -> BTreeMap<Account, i64> {
        let mut sums = BTreeMap::new();
        for tx in txs {
            for p in &tx.postings {
                *sums.entry(p.account.clone()).or_default() += p.amount_minor;
            }
        }
        sums.retain(|_, v| *v != 0);
        sums
    }

    use std::collections::BTreeMap;

    #[test]
    fn a_batch_moves_exactly_what_its_results_would_one_by_one() {
        let batch = [
            result("o1", "v1", 5, "a1"),
            result("o1", "v2", 7, "a2"),
            result("o2", "v1", 3, "a3"),
            result("o1", "v1", 5, "a4"),
        ];
        let one_by_one: Vec<NewTransaction> = batch
            .iter()
            .map(|r| pay_result(&r.owner_id, &r.volunteer_id, r.price, &r.assignment_id))
            .collect();
        let tx = pay_results(&batch).unwrap();
        validate(&tx).unwrap();
        assert_eq!(moved(std::slice::from_ref(&tx)), moved(&one_by_one));
        assert_eq!(tx.event_key, "results:a1");
        assert_eq!(tx.kind, "result");
        // One posting per account: two owners, two volunteers, the platform.
        assert_eq!(tx.postings.len(), 5);
    }

    #[test]
    fn an_empty_batch_posts_nothing() {
        assert!(pay_results(&[]).is_none());
    }
}
