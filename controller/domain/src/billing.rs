//! Money in the controller: what a check costs, admitting a run against the owner's
//! credit, paying for an accepted result, operator grants, balances.
//!
//! The rules live in `lastmile-billing` (the ledger, its floors and idempotency, the
//! price table); this module applies them to the controller's records, on the
//! controller's connection, inside the controller's transactions.
//!
//! **Architecture Invariant:** an accepted result is paid exactly once, in the database
//! transaction that folds it out of the fold queue (`ingest::fold_pending`), together
//! with the other results of its batch (one ledger transaction, event key
//! `results:<first assignment id>`); a repeated submission is never queued again and a
//! rolled-back fold pays nothing and leaves its results queued. A run is admitted only
//! when the owner's credit, less what is already held for assignments still pending,
//! leased, or done and not yet paid (queued), covers all of its assignments at the
//! check's price; the owner's credit account is locked while this is decided. A late
//! result (its lease ran out and the slot was re-offered) is stored but not paid.

use std::collections::BTreeMap;

use diesel::prelude::*;
use lastmile_billing::ledger::{self, Account, BalanceLine, Posted};
use lastmile_billing::{movements, pricing, AccountKind, Currency, Money};
use lastmile_protocol::CheckKind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::check_terms::StoredCheck;
use crate::error::{Error, Result};
use lastmile_storage::checks::Check;
use lastmile_storage::result_payments::{self, ResultPayment};
use lastmile_storage::schema::{
    checks, ledger_accounts, ledger_postings, ledger_transactions, owners, runs,
};
use lastmile_storage::{write_tx, DbConn};

/// The price of one accepted result of `check` (see `lastmile_billing::pricing`).
pub fn price_of(check: &Check) -> Money {
    let kind = check.kind.parse().unwrap_or(CheckKind::Http);
    let selection = check.selection();
    pricing::price_per_result(kind, &selection.connection_classes, &selection.countries)
}

/// [`held_for_assignments`]' statement (`$1`: the owner).
pub fn held_for_assignments_sql() -> String {
    format!(
        "SELECT o.run_id, COUNT(*) AS n FROM checks c CROSS JOIN open_assignments o \
          WHERE o.check_id = c.id AND c.owner_id = $1 \
          GROUP BY o.run_id \
         UNION ALL \
         SELECT q.run_id, q.n FROM ( \
             SELECT run_id, CAST(SUM(n) AS BIGINT) AS n FROM ({}) e GROUP BY run_id) q \
          WHERE (SELECT c.owner_id FROM runs r JOIN checks c ON c.id = r.check_id \
                  WHERE r.id = q.run_id) = $1",
        lastmile_storage::fold_queue::QUEUED_RUNS
    )
}

/// Credit held for the owner's assignments that are still pending or leased, or whose
/// result is accepted and still queued for folding: each will be paid for, at its run's
/// admitted price, when its result is folded.
///
/// Called by every run's admission, so it costs what the owner has in flight, never the
/// history: open assignments are found through the owner's checks and the index of open
/// work by check (`open_assignments_check`), queued results through the runs each
/// fold queue entry lists (seconds of results), each queued run's owner looked up by
/// key (a scalar subquery, which no plan turns into a walk over the owner's runs, which
/// never age out); the two sets are disjoint (a result is queued by the transaction
/// that closes its assignment). An `OR` of the two sets, as this was written before,
/// read the whole `assignments` table every time. The checks are joined with `CROSS JOIN`, which
/// SQLite reads as "checks first" (PostgreSQL orders it freely, as an inner join):
/// without statistics SQLite otherwise started from every owner's open work.
pub fn held_for_assignments(conn: &mut DbConn, owner_id: &str) -> Result<Money> {
    #[derive(QueryableByName)]
    struct Held {
        #[diesel(sql_type = diesel::sql_types::Text)]
        run_id: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let held: Vec<Held> = diesel::sql_query(held_for_assignments_sql())
        .bind::<diesel::sql_types::Text, _>(owner_id)
        .load(conn)?;
    let run_ids: Vec<&str> = held.iter().map(|h| h.run_id.as_str()).collect();
    let terms = runs_terms(conn, &run_ids)?;
    let mut minor = 0;
    for h in &held {
        let price = terms.get(&h.run_id).map_or(0, |t| t.price.minor);
        minor += price * h.n;
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

/// One accepted result to pay for.
#[derive(Debug, Clone, Copy)]
pub struct ToPay<'a> {
    pub assignment_id: &'a str,
    pub run_id: &'a str,
    /// The volunteer whose agent measured it.
    pub volunteer_id: &'a str,
}

/// Pays for a batch of accepted results inside the transaction that folds them, in
/// one ledger transaction (`movements::pay_results`): each owner's credit pays the
/// price its run was admitted at, each volunteer earns the price less the platform
/// fee. A result the owner's credit no longer covers (admission makes that impossible
/// unless credit was taken away meanwhile) is left unpaid and logged; the others are
/// paid. Each paid result is linked to the ledger transaction in `result_payments`,
/// whose key refuses a second payment of the same result. Returns how many were left
/// unpaid.
///
/// The runs' terms come from `known` when given (this process's cache), else are read.
///
/// Lock order: the owners' credit accounts first (their ids, `owner_credit:...`, sort
/// before every other account `ledger::post` locks), then the rest in id order, the
/// same global order every posting uses, so folders on several controllers cannot
/// deadlock.
pub fn pay_for_results(
    conn: &mut DbConn,
    results: &[ToPay<'_>],
    known: Option<&RunTermsCache>,
) -> Result<usize> {
    let mut run_ids: Vec<&str> = results.iter().map(|r| r.run_id).collect();
    run_ids.sort_unstable();
    run_ids.dedup();
    let terms = match known {
        Some(cache) => cache.terms_of(conn, &run_ids)?,
        None => runs_terms(conn, &run_ids)?,
    };
    let mut credit: BTreeMap<Account, i64> = terms
        .values()
        .map(|t| (Account::owner_credit(&t.owner_id, t.price.currency), 0))
        .collect();
    for (account, left) in credit.iter_mut() {
        *left = ledger::lock_balance(conn, account)?.minor;
    }
    let mut payments = Vec::with_capacity(results.len());
    let mut unpaid = 0;
    for r in results {
        let t = terms
            .get(r.run_id)
            .ok_or_else(|| Error::Internal(format!("run {} of a result is gone", r.run_id)))?;
        let account = Account::owner_credit(&t.owner_id, t.price.currency);
        let left = credit.entry(account).or_default();
        if *left < t.price.minor {
            unpaid += 1;
            tracing::warn!(assignment = %r.assignment_id, owner = %t.owner_id, credit_minor = *left,
                price = %t.price, "result stored but not paid: the owner's credit no longer covers it");
            continue;
        }
        *left -= t.price.minor;
        payments.push(movements::ResultPayment {
            owner_id: t.owner_id.clone(),
            volunteer_id: r.volunteer_id.to_owned(),
            price: t.price,
            assignment_id: r.assignment_id.to_owned(),
        });
    }
    if let Some(tx) = movements::pay_results(&payments) {
        let posted = ledger::post(conn, &tx)?;
        let links: Vec<ResultPayment> = payments
            .into_iter()
            .map(|p| ResultPayment {
                assignment_id: p.assignment_id,
                transaction_id: posted.transaction.id.clone(),
                price_minor: p.price.minor,
            })
            .collect();
        result_payments::record(conn, &links)?;
    }
    Ok(unpaid)
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

/// The terms of run `run_id`, in one query.
pub fn run_terms(conn: &mut DbConn, run_id: &str) -> Result<RunTerms> {
    runs_terms(conn, &[run_id])?
        .remove(run_id)
        .ok_or(Error::NotFound {
            what: "run",
            code: "run_not_found",
        })
}

/// The terms of several runs, in one query per thousand runs (a fold pays for results
/// of many runs at once).
pub fn runs_terms(conn: &mut DbConn, run_ids: &[&str]) -> Result<BTreeMap<String, RunTerms>> {
    Ok(read_terms(conn, run_ids)?
        .into_iter()
        .map(|(run_id, (terms, _))| (run_id, terms))
        .collect())
}

/// [`runs_terms`], each with whether its price is the one the run was admitted with
/// (kept on the run, so never changing) rather than its check's price now.
fn read_terms(conn: &mut DbConn, run_ids: &[&str]) -> Result<BTreeMap<String, (RunTerms, bool)>> {
    let mut terms = BTreeMap::new();
    for chunk in run_ids.chunks(lastmile_storage::agents::BATCH_ROWS) {
        let rows: Vec<(String, Option<i64>, Option<String>, Check)> = runs::table
            .inner_join(checks::table.on(checks::id.eq(runs::check_id)))
            .filter(runs::id.eq_any(chunk))
            .select((
                runs::id,
                runs::price_minor,
                runs::price_currency,
                Check::as_select(),
            ))
            .load(conn)?;
        for (run_id, minor, currency, check) in rows {
            let admitted = admitted_price(&run_id, minor, currency)?;
            let terms_of_run = RunTerms {
                owner_id: check.owner_id.clone(),
                price: admitted.unwrap_or_else(|| price_of(&check)),
            };
            terms.insert(run_id, (terms_of_run, admitted.is_some()));
        }
    }
    Ok(terms)
}

/// Most runs a [`RunTermsCache`] holds: a few MB; emptied when full.
const RUN_TERMS_CACHED: usize = 50_000;

/// The terms of the runs this process's folds have paid results of, so that a fold
/// reads only the runs it has not met (3.4 µs of PostgreSQL a result, read per fold,
/// in `bench ingest`). Only runs with their admitted price are kept: that price and
/// their check's owner never change once the run is made, so nothing here goes stale.
#[derive(Debug, Default)]
pub struct RunTermsCache {
    terms: std::sync::Mutex<std::collections::HashMap<String, RunTerms>>,
}

impl RunTermsCache {
    /// The terms of `run_ids`, reading only those not held.
    pub fn terms_of(
        &self,
        conn: &mut DbConn,
        run_ids: &[&str],
    ) -> Result<BTreeMap<String, RunTerms>> {
        let mut known = BTreeMap::new();
        let mut missing = Vec::new();
        {
            let held = self.terms.lock().unwrap_or_else(|p| p.into_inner());
            for id in run_ids {
                match held.get(*id) {
                    Some(terms) => {
                        known.insert((*id).to_owned(), terms.clone());
                    }
                    None => missing.push(*id),
                }
            }
        }
        if missing.is_empty() {
            return Ok(known);
        }
        // Read without the lock held: another fold's lookups do not wait for this one.
        let read = read_terms(conn, &missing)?;
        let mut held = self.terms.lock().unwrap_or_else(|p| p.into_inner());
        if held.len() + read.len() > RUN_TERMS_CACHED {
            held.clear();
        }
        for (run_id, (terms, admitted)) in read {
            if admitted {
                held.insert(run_id.clone(), terms.clone());
            }
            known.insert(run_id, terms);
        }
        Ok(known)
    }
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
