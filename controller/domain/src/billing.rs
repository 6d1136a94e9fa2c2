//! Money in the controller: what a check costs, admitting a run against the owner's
//! credit, paying for an accepted result, operator grants, balances.
//!
//! The rules live in `lastmile-billing` (the ledger, its floors and idempotency, the
//! price table); this module applies them to the controller's records, on the
//! controller's connection, inside the controller's transactions.
//!
//! **Architecture Invariant:** an accepted result is paid in the same database
//! transaction that stores it, under the event key `result:<assignment id>`, so a
//! repeated submission pays once and a rolled-back submission pays nothing. A run is
//! admitted only when the owner's credit, less what is already held for assignments
//! still pending or leased, covers all of its assignments at the check's price; the
//! owner's credit account is locked while this is decided. A late result (its lease ran
//! out and the slot was re-offered) is stored but not paid.

use diesel::prelude::*;
use lastmile_billing::ledger::{self, Account, BalanceLine, Posted};
use lastmile_billing::{movements, pricing, AccountKind, Currency, LedgerError, Money};
use lastmile_protocol::CheckKind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::check_terms::StoredCheck;
use crate::error::{Error, Result};
use lastmile_storage::assignments::{state, Assignment};
use lastmile_storage::checks::Check;
use lastmile_storage::schema::{
    assignments, checks, ledger_accounts, ledger_postings, ledger_transactions, owners, runs,
};
use lastmile_storage::{write_tx, DbConn};

/// The price of one accepted result of `check` (see `lastmile_billing::pricing`).
pub fn price_of(check: &Check) -> Money {
    let kind = check.kind.parse().unwrap_or(CheckKind::Http);
    let selection = check.selection();
    pricing::price_per_result(kind, &selection.connection_classes, &selection.countries)
}

/// Credit held for the owner's assignments that are still pending or leased: each will
/// be paid for, at its run's admitted price, when its result is accepted.
pub fn held_for_assignments(conn: &mut DbConn, owner_id: &str) -> Result<Money> {
    let open: Vec<(String, Option<i64>, Option<String>, i64)> = assignments::table
        .inner_join(checks::table)
        .inner_join(runs::table)
        .filter(checks::owner_id.eq(owner_id))
        .filter(assignments::state.eq_any([state::PENDING, state::LEASED]))
        .group_by((runs::id, runs::price_minor, runs::price_currency))
        .select((
            runs::id,
            runs::price_minor,
            runs::price_currency,
            diesel::dsl::count_star(),
        ))
        .load(conn)?;
    let mut minor = 0;
    for (run_id, price_minor, currency, count) in open {
        // Only a run from before prices were kept with runs costs a lookup of its check.
        let price = match admitted_price(&run_id, price_minor, currency)? {
            Some(price) => price,
            None => run_terms(conn, &run_id)?.price,
        };
        minor += price.minor * count;
    }
    Ok(Money::new(minor, pricing::PRICE_CURRENCY))
}

/// Admits a run of an owner's check that will create `requested` assignments at
/// `price` each, or refuses it with a 402 that says what it costs and what the owner
/// has. Call inside the write transaction that creates the run: the owner's credit
/// account stays locked until it commits, so two runs cannot both spend the same credit.
pub fn admit_run(conn: &mut DbConn, owner_id: &str, price: Money, requested: u32) -> Result<()> {
    if requested == 0 {
        return Ok(());
    }
    let account = Account::owner_credit(owner_id, price.currency);
    let balance = ledger::lock_balance(conn, &account)?;
    let held = held_for_assignments(conn, owner_id)?;
    let cost = Money::new(price.minor * i64::from(requested), price.currency);
    let available = balance.minor - held.minor;
    if cost.minor > available {
        return Err(Error::PaymentRequired {
            code: "insufficient_credit",
            message: format!(
                "this run needs {requested} results at {price} each ({cost}), but your \
                 credit is {balance}, of which {held} is held for assignments in progress, \
                 leaving {}; add credit and try again",
                Money::new(available, price.currency)
            ),
        });
    }
    Ok(())
}

/// Pays for an accepted result inside the transaction that stores it: the owner's
/// credit pays the price its run was admitted at, the volunteer behind the agent earns
/// the price less the platform fee. Returns `None` (and logs) if the owner's credit
/// cannot cover it, which admission makes impossible unless credit was taken away
/// meanwhile: the result is still stored, only unpaid.
pub fn pay_for_result(
    conn: &mut DbConn,
    assignment: &Assignment,
    volunteer_id: &str,
) -> Result<Option<Posted>> {
    let terms = run_terms(conn, &assignment.run_id)?;
    let tx = movements::pay_result(&terms.owner_id, volunteer_id, terms.price, &assignment.id);
    match ledger::post(conn, &tx) {
        Ok(posted) => Ok(Some(posted)),
        Err(e @ LedgerError::BelowFloor { .. }) => {
            tracing::warn!(assignment = %assignment.id, error = %e, "result stored but not paid");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Grants `amount` of test credit to an owner (an operator's action, not a payment).
/// `grant_id` names the grant: granting again with the same id changes nothing.
pub fn grant_credit(
    conn: &mut DbConn,
    owner_id: &str,
    amount: Money,
    grant_id: &str,
) -> Result<Posted> {
    if amount.minor <= 0 {
        return Err(Error::invalid(
            "invalid_amount",
            "the amount must be a positive number of minor units (cents)",
        ));
    }
    if !pricing::is_priced(amount.currency) {
        return Err(Error::invalid(
            "unsupported_currency",
            format!(
                "credit can only be granted in {} (the currencies prices exist in; credit \
                 in another could never be spent), not {}",
                pricing::priced_currencies(),
                amount.currency
            ),
        ));
    }
    let exists: i64 = owners::table
        .filter(owners::id.eq(owner_id))
        .count()
        .get_result(conn)?;
    if exists == 0 {
        return Err(Error::NotFound {
            what: "owner",
            code: "owner_not_found",
        });
    }
    write_tx(conn, |c| {
        Ok(ledger::post(
            c,
            &movements::grant(owner_id, amount, grant_id),
        )?)
    })
}

/// Who a balance belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HolderKind {
    Owner,
    Volunteer,
}

/// One account's balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AccountBalance {
    /// `owner_credit`, `volunteer_earnings` or `payouts_in_transit`.
    pub kind: String,
    /// ISO 4217, lower case.
    pub currency: String,
    /// Integer minor units (cents).
    pub balance_minor: i64,
}

/// An owner's or volunteer's balances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Balances {
    pub holder: HolderKind,
    pub id: String,
    pub balances: Vec<AccountBalance>,
    /// Owners only: credit held for assignments in progress (in `usd` minor units).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_minor: Option<i64>,
}

/// The balances of an owner or volunteer. The main accounts are listed even before
/// their first posting (at 0 usd).
pub fn balances(conn: &mut DbConn, holder: HolderKind, id: &str) -> Result<Balances> {
    let mut lines: Vec<BalanceLine> = ledger::balances_of_holder(conn, id)?;
    let main: &[AccountKind] = match holder {
        HolderKind::Owner => &[AccountKind::OwnerCredit],
        HolderKind::Volunteer => &[
            AccountKind::VolunteerEarnings,
            AccountKind::PayoutsInTransit,
        ],
    };
    for kind in main {
        if !lines
            .iter()
            .any(|l| l.kind == *kind && l.currency == pricing::PRICE_CURRENCY)
        {
            lines.push(BalanceLine {
                account: String::new(),
                kind: *kind,
                holder: Some(id.to_owned()),
                currency: pricing::PRICE_CURRENCY,
                balance_minor: 0,
            });
        }
    }
    lines.sort_by_key(|l| (l.kind, l.currency));
    let held_minor = match holder {
        HolderKind::Owner => Some(held_for_assignments(conn, id)?.minor),
        HolderKind::Volunteer => None,
    };
    Ok(Balances {
        holder,
        id: id.to_owned(),
        balances: lines
            .into_iter()
            .map(|l| AccountBalance {
                kind: l.kind.as_str().to_owned(),
                currency: l.currency.to_string(),
                balance_minor: l.balance_minor,
            })
            .collect(),
        held_minor,
    })
}

/// One line of the trial balance file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialBalanceLine {
    pub account: String,
    pub kind: String,
    pub currency: String,
    pub balance_minor: i64,
}

/// Every account's balance; they sum to zero per currency. `movements` adds how much
/// moved by each kind of transaction (purchases, results, payouts ...), so the file
/// shows where the balances came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialBalance {
    pub accounts: Vec<TrialBalanceLine>,
    #[serde(default)]
    pub movements: Vec<MovementTotal>,
}

/// The transactions of one kind in one currency: how many, and the money they moved
/// (the sum of their positive postings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovementTotal {
    /// `purchase`, `grant`, `result`, `payout_started`, `payout_completed`, ...
    pub kind: String,
    pub currency: String,
    pub transactions: i64,
    pub amount_minor: i64,
}

impl TrialBalance {
    /// The sum of the balances of one kind in one currency.
    pub fn total(&self, kind: AccountKind, currency: Currency) -> i64 {
        self.accounts
            .iter()
            .filter(|l| l.kind == kind.as_str() && l.currency == currency.as_str())
            .map(|l| l.balance_minor)
            .sum()
    }
}

/// The ledger's trial balance, with the totals per kind of movement. It reads every
/// positive posting: for the demo and for audits, not for a request path.
pub fn trial_balance(conn: &mut DbConn) -> Result<TrialBalance> {
    let rows: Vec<(String, String, String, i64)> = ledger_postings::table
        .inner_join(ledger_transactions::table)
        .inner_join(ledger_accounts::table)
        .filter(ledger_postings::amount_minor.gt(0))
        .select((
            ledger_transactions::kind,
            ledger_accounts::currency,
            ledger_transactions::id,
            ledger_postings::amount_minor,
        ))
        .load(conn)?;
    let mut totals: std::collections::BTreeMap<
        (String, String),
        (std::collections::BTreeSet<String>, i64),
    > = std::collections::BTreeMap::new();
    for (kind, currency, tx, amount) in rows {
        let entry = totals.entry((kind, currency)).or_default();
        entry.0.insert(tx);
        entry.1 += amount;
    }
    let movements = totals
        .into_iter()
        .map(|((kind, currency), (txs, amount_minor))| MovementTotal {
            kind,
            currency,
            transactions: txs.len() as i64,
            amount_minor,
        })
        .collect();
    Ok(TrialBalance {
        movements,
        accounts: ledger::trial_balance(conn)?
            .into_iter()
            .map(|l| TrialBalanceLine {
                account: l.account,
                kind: l.kind.as_str().to_owned(),
                currency: l.currency.to_string(),
                balance_minor: l.balance_minor,
            })
            .collect(),
    })
}

/// Who pays for run `run_id`'s results, and what each costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunTerms {
    pub owner_id: String,
    /// The price the run was admitted with (for a run from before prices were kept
    /// with runs, the check's price now).
    pub price: lastmile_billing::Money,
}

/// The terms of run `run_id`, in one query (it is on the path of every accepted result).
pub fn run_terms(conn: &mut DbConn, run_id: &str) -> Result<RunTerms> {
    let (minor, currency, check): (Option<i64>, Option<String>, Check) = runs::table
        .inner_join(checks::table.on(checks::id.eq(runs::check_id)))
        .filter(runs::id.eq(run_id))
        .select((runs::price_minor, runs::price_currency, Check::as_select()))
        .first(conn)?;
    let price = admitted_price(run_id, minor, currency)?.unwrap_or_else(|| price_of(&check));
    Ok(RunTerms {
        owner_id: check.owner_id,
        price,
    })
}

/// The price a run row keeps, if it keeps one.
pub fn admitted_price(
    run_id: &str,
    minor: Option<i64>,
    currency: Option<String>,
) -> Result<Option<lastmile_billing::Money>> {
    let (Some(minor), Some(currency)) = (minor, currency) else {
        return Ok(None);
    };
    let currency = currency
        .parse()
        .map_err(|e| Error::Internal(format!("run {run_id}: price currency: {e:?}")))?;
    Ok(Some(lastmile_billing::Money::new(minor, currency)))
}
