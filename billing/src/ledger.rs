//! The double-entry ledger: accounts, balanced transactions, balances derived from
//! postings.
//!
//! **Invariants** (each enforced here, inside the caller's database transaction):
//!
//! - Every movement of money is one [`NewTransaction`] whose postings sum to zero in
//!   each currency. An unbalanced, empty or zero-amount transaction is refused.
//! - Each transaction names the event that caused it (`event_key`, unique in the
//!   table). Posting the same event again writes nothing and returns the transaction
//!   posted the first time ([`Posted::duplicate`]), however often it is retried.
//! - An account's balance is the sum of its postings. Each account keeps it as a
//!   running balance, moved by every posting in the same database transaction, so that
//!   reading or checking a balance costs one row however long the history is; the
//!   postings stay the truth, and [`audit`] recomputes every balance from them.
//! - Each account kind has a floor ([`AccountKind::floor`]): an owner's credit, a
//!   volunteer's earnings, platform revenue and payouts in transit never go below
//!   zero. A transaction that would take any account below its floor is refused with
//!   [`LedgerError::BelowFloor`] before anything is written. The accounts a
//!   transaction touches are locked first (`FOR UPDATE` on PostgreSQL; SQLite's
//!   single writer), so two concurrent debits cannot both pass the check.
//!
//! **Sign convention:** a balance is what the account's holder has. Money entering
//! the system from outside (a card payment through Stripe, an operator's grant) is
//! the mirror of a negative balance on `stripe_clearing` or `operator_grants`; these
//! two are the only kinds with no floor. So the sum of all balances in a currency is
//! always zero.
//!
//! [`post`] must run inside a write transaction the caller opened (the controller's
//! `db::write_tx`; [`with_write_tx`] for callers that have none), so that the payment
//! commits or rolls back together with the event that caused it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use diesel::connection::SimpleConnection;
use serde::Serialize;

use crate::money::{Currency, Money, MAX_MINOR};
use crate::store::{self, AccountRow, AsLedgerConn, LedgerConn, PostingRow, TransactionRow};

/// What an account is for. Closed set; stored as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// An owner's prepaid test credit. Held by the owner; floor 0.
    OwnerCredit,
    /// A volunteer's earnings not yet paid out. Held by the volunteer; floor 0.
    VolunteerEarnings,
    /// A volunteer's payouts sent to Stripe and not yet settled. Floor 0.
    PayoutsInTransit,
    /// The platform's fees. Floor 0.
    PlatformRevenue,
    /// The mirror of money held at Stripe: card payments in (negative), payouts out.
    /// No floor.
    StripeClearing,
    /// The mirror of test credit an operator granted (no money behind it). No floor.
    OperatorGrants,
}

impl AccountKind {
    /// Every kind.
    pub const ALL: [AccountKind; 6] = [
        AccountKind::OwnerCredit,
        AccountKind::VolunteerEarnings,
        AccountKind::PayoutsInTransit,
        AccountKind::PlatformRevenue,
        AccountKind::StripeClearing,
        AccountKind::OperatorGrants,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::OwnerCredit => "owner_credit",
            AccountKind::VolunteerEarnings => "volunteer_earnings",
            AccountKind::PayoutsInTransit => "payouts_in_transit",
            AccountKind::PlatformRevenue => "platform_revenue",
            AccountKind::StripeClearing => "stripe_clearing",
            AccountKind::OperatorGrants => "operator_grants",
        }
    }

    /// The kind with this stored name.
    pub fn parse(s: &str) -> Option<AccountKind> {
        AccountKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The lowest balance an account of this kind may have; `None` for the mirrors of
    /// outside money, which go negative by design.
    pub fn floor(self) -> Option<i64> {
        match self {
            AccountKind::OwnerCredit
            | AccountKind::VolunteerEarnings
            | AccountKind::PayoutsInTransit
            | AccountKind::PlatformRevenue => Some(0),
            AccountKind::StripeClearing | AccountKind::OperatorGrants => None,
        }
    }

    /// Whether an account of this kind belongs to one owner or volunteer.
    pub fn has_holder(self) -> bool {
        matches!(
            self,
            AccountKind::OwnerCredit
                | AccountKind::VolunteerEarnings
                | AccountKind::PayoutsInTransit
        )
    }
}

impl fmt::Display for AccountKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One account: a kind, its holder (an owner or volunteer id) where the kind has one,
/// and a currency. Accounts are created on first use.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Account {
    pub kind: AccountKind,
    pub holder: Option<String>,
    pub currency: Currency,
}

impl Account {
    /// An owner's prepaid credit.
    pub fn owner_credit(owner_id: &str, currency: Currency) -> Account {
        Account::held(AccountKind::OwnerCredit, owner_id, currency)
    }

    /// A volunteer's earnings.
    pub fn volunteer_earnings(volunteer_id: &str, currency: Currency) -> Account {
        Account::held(AccountKind::VolunteerEarnings, volunteer_id, currency)
    }

    /// A volunteer's payouts in transit.
    pub fn payouts_in_transit(volunteer_id: &str, currency: Currency) -> Account {
        Account::held(AccountKind::PayoutsInTransit, volunteer_id, currency)
    }

    /// One of the platform's own accounts (revenue, Stripe clearing, operator grants).
    pub fn platform(kind: AccountKind, currency: Currency) -> Account {
        Account {
            kind,
            holder: None,
            currency,
        }
    }

    fn held(kind: AccountKind, holder: &str, currency: Currency) -> Account {
        Account {
            kind,
            holder: Some(holder.to_owned()),
            currency,
        }
    }

    /// The stored id: `<kind>:<holder>:<currency>` or `<kind>:<currency>`.
    pub fn id(&self) -> String {
        match &self.holder {
            Some(h) => format!("{}:{h}:{}", self.kind, self.currency),
            None => format!("{}:{}", self.kind, self.currency),
        }
    }

    fn from_row(row: &AccountRow) -> Result<Account, LedgerError> {
        let kind = AccountKind::parse(&row.kind)
            .ok_or_else(|| LedgerError::Corrupt(format!("unknown account kind {}", row.kind)))?;
        let currency = row
            .currency
            .parse()
            .map_err(|e| LedgerError::Corrupt(format!("account {}: {e}", row.id)))?;
        Ok(Account {
            kind,
            holder: row.holder.clone(),
            currency,
        })
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id())
    }
}

/// One line of a transaction: a signed amount on one account (positive: the holder
/// has more).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    pub account: Account,
    pub amount_minor: i64,
}

/// A movement of money to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTransaction {
    /// Names the event that caused it; unique across the ledger.
    pub event_key: String,
    /// What kind of movement (`purchase`, `result`, `payout_started`, ...).
    pub kind: &'static str,
    /// A human note.
    pub memo: String,
    pub postings: Vec<Posting>,
}

/// A posted transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub id: String,
    pub event_key: String,
    pub kind: String,
    pub memo: String,
    pub created_at_us: i64,
    pub postings: Vec<Posting>,
}

/// What [`post`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    /// The transaction for the event (the first one, for a repeated event).
    pub transaction: Transaction,
    /// True when the event had been posted before and nothing was written now.
    pub duplicate: bool,
}

/// Why the ledger refused a transaction, or failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("a transaction needs at least two postings")]
    TooFewPostings,
    #[error("posting to {account} has amount {amount}; amounts must be non-zero and at most {MAX_MINOR} minor units")]
    BadAmount { account: String, amount: i64 },
    #[error("the transaction posts to {0} twice; merge the postings")]
    DuplicateAccount(String),
    #[error(
        "the transaction does not balance: its {currency} postings sum to {sum} minor units, not 0"
    )]
    Unbalanced { currency: Currency, sum: i64 },
    #[error("account kind {kind} {need} a holder")]
    BadHolder {
        kind: AccountKind,
        need: &'static str,
    },
    #[error("the event key must be 1 to 200 characters")]
    BadEventKey,
    #[error(
        "{account} has {balance} minor units; taking {amount} would go below its floor of {floor}"
    )]
    BelowFloor {
        account: String,
        kind: AccountKind,
        balance: i64,
        amount: i64,
        floor: i64,
    },
    #[error("ledger data is inconsistent: {0}")]
    Corrupt(String),
    #[error("ledger storage failed: {0}")]
    Db(#[from] diesel::result::Error),
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Checks a transaction's shape: at least two postings, non-zero amounts within
/// range, each account once, holders where the kind has one, balanced per currency.
pub fn validate(tx: &NewTransaction) -> Result<(), LedgerError> {
    if tx.event_key.is_empty() || tx.event_key.chars().count() > 200 {
        return Err(LedgerError::BadEventKey);
    }
    if tx.postings.len() < 2 {
        return Err(LedgerError::TooFewPostings);
    }
    let mut seen = BTreeSet::new();
    let mut sums: BTreeMap<Currency, i64> = BTreeMap::new();
    for p in &tx.postings {
        let id = p.account.id();
        if p.amount_minor == 0 || p.amount_minor.unsigned_abs() > MAX_MINOR as u64 {
            return Err(LedgerError::BadAmount {
                account: id,
                amount: p.amount_minor,
            });
        }
        match (p.account.kind.has_holder(), &p.account.holder) {
            (true, None) => {
                return Err(LedgerError::BadHolder {
                    kind: p.account.kind,
                    need: "needs",
                })
            }
            (false, Some(_)) => {
                return Err(LedgerError::BadHolder {
                    kind: p.account.kind,
                    need: "has no",
                })
            }
            _ => {}
        }
        if !seen.insert(id.clone()) {
            return Err(LedgerError::DuplicateAccount(id));
        }
        // At most a few postings of at most MAX_MINOR each: no overflow.
        *sums.entry(p.account.currency).or_default() += p.amount_minor;
    }
    if let Some((currency, sum)) = sums.into_iter().find(|(_, s)| *s != 0) {
        return Err(LedgerError::Unbalanced { currency, sum });
    }
    Ok(())
}

/// Posts `tx` inside the caller's open write transaction: exactly once per event key,
/// balanced, and with every account staying at or above its floor. On an error
/// nothing has been written except, possibly, empty account rows, and the caller's
/// transaction should be rolled back.
pub fn post(conn: &mut impl AsLedgerConn, tx: &NewTransaction) -> Result<Posted, LedgerError> {
    validate(tx)?;
    let now = now_us();
    let rows: Vec<AccountRow> = tx
        .postings
        .iter()
        .map(|p| AccountRow {
            id: p.account.id(),
            kind: p.account.kind.as_str().to_owned(),
            holder: p.account.holder.clone(),
            currency: p.account.currency.to_string(),
            created_at: now,
            balance_minor: 0,
        })
        .collect();
    store::ensure_accounts(conn, &rows)?;
    let mut ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    let balances: BTreeMap<String, i64> = store::lock_accounts(conn, &ids)?.into_iter().collect();
    // After the locks: a concurrent post of the same event has committed by now.
    if let Some(first) = store::find_transaction(conn, &tx.event_key)? {
        return Ok(Posted {
            transaction: load(conn, first)?,
            duplicate: true,
        });
    }
    for p in tx.postings.iter().filter(|p| p.amount_minor < 0) {
        let Some(floor) = p.account.kind.floor() else {
            continue;
        };
        let id = p.account.id();
        let balance = balances.get(&id).copied().unwrap_or(0);
        if balance + p.amount_minor < floor {
            return Err(LedgerError::BelowFloor {
                account: id,
                kind: p.account.kind,
                balance,
                amount: -p.amount_minor,
                floor,
            });
        }
    }
    let row = TransactionRow {
        id: uuid::Uuid::new_v4().to_string(),
        event_key: tx.event_key.clone(),
        kind: tx.kind.to_owned(),
        memo: tx.memo.clone(),
        created_at: now,
    };
    let postings: Vec<PostingRow> = tx
        .postings
        .iter()
        .map(|p| PostingRow {
            transaction_id: row.id.clone(),
            account_id: p.account.id(),
            amount_minor: p.amount_minor,
        })
        .collect();
    store::insert_transaction(conn, &row, &postings)?;
    Ok(Posted {
        transaction: Transaction {
            id: row.id,
            event_key: row.event_key,
            kind: row.kind,
            memo: row.memo,
            created_at_us: row.created_at,
            postings: tx.postings.clone(),
        },
        duplicate: false,
    })
}

fn load(conn: &mut impl AsLedgerConn, row: TransactionRow) -> Result<Transaction, LedgerError> {
    let postings = store::postings_of(conn, &row.id)?
        .iter()
        .map(|(p, a)| {
            Ok(Posting {
                account: Account::from_row(a)?,
                amount_minor: p.amount_minor,
            })
        })
        .collect::<Result<Vec<_>, LedgerError>>()?;
    Ok(Transaction {
        id: row.id,
        event_key: row.event_key,
        kind: row.kind,
        memo: row.memo,
        created_at_us: row.created_at,
        postings,
    })
}

/// The transaction posted for `event_key`, if any.
pub fn find(
    conn: &mut impl AsLedgerConn,
    event_key: &str,
) -> Result<Option<Transaction>, LedgerError> {
    match store::find_transaction(conn, event_key)? {
        Some(row) => Ok(Some(load(conn, row)?)),
        None => Ok(None),
    }
}

/// The balance of one account (0 for an account never used).
pub fn balance(conn: &mut impl AsLedgerConn, account: &Account) -> Result<Money, LedgerError> {
    let minor = store::balances_of(conn, &[account.id()])?
        .first()
        .map_or(0, |(_, b)| *b);
    Ok(Money::new(minor, account.currency))
}

/// Locks an account (creating it if needed) until the end of the caller's
/// transaction and returns its balance: for a read-check-write that must not race,
/// such as admitting a run against an owner's credit.
pub fn lock_balance(conn: &mut impl AsLedgerConn, account: &Account) -> Result<Money, LedgerError> {
    let id = account.id();
    store::ensure_accounts(
        conn,
        &[AccountRow {
            id: id.clone(),
            kind: account.kind.as_str().to_owned(),
            holder: account.holder.clone(),
            currency: account.currency.to_string(),
            created_at: now_us(),
            balance_minor: 0,
        }],
    )?;
    let minor = store::lock_accounts(conn, &[id])?
        .first()
        .map_or(0, |(_, b)| *b);
    Ok(Money::new(minor, account.currency))
}

/// One line of a trial balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BalanceLine {
    /// The account id (`owner_credit:<owner>:usd`, `platform_revenue:usd`).
    pub account: String,
    pub kind: AccountKind,
    /// The owner or volunteer id for held accounts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    pub currency: Currency,
    pub balance_minor: i64,
}

/// Every account and its balance, in account id order. The balances sum to zero in
/// each currency (see [`sums_by_currency`]).
pub fn trial_balance(conn: &mut impl AsLedgerConn) -> Result<Vec<BalanceLine>, LedgerError> {
    lines(conn, None)
}

/// The accounts one owner or volunteer holds, with balances.
pub fn balances_of_holder(
    conn: &mut impl AsLedgerConn,
    holder: &str,
) -> Result<Vec<BalanceLine>, LedgerError> {
    lines(conn, Some(holder))
}

fn lines(
    conn: &mut impl AsLedgerConn,
    holder: Option<&str>,
) -> Result<Vec<BalanceLine>, LedgerError> {
    store::accounts_with_balances(conn, holder)?
        .into_iter()
        .map(|(row, balance_minor)| {
            let account = Account::from_row(&row)?;
            Ok(BalanceLine {
                account: row.id,
                kind: account.kind,
                holder: account.holder,
                currency: account.currency,
                balance_minor,
            })
        })
        .collect()
}

/// The sum of the lines' balances per currency; all zero in a sound ledger.
pub fn sums_by_currency(lines: &[BalanceLine]) -> BTreeMap<Currency, i64> {
    let mut sums = BTreeMap::new();
    for l in lines {
        *sums.entry(l.currency).or_default() += l.balance_minor;
    }
    sums
}

/// Audits the stored ledger: every transaction sums to zero per currency, every
/// account's running balance equals the sum of its postings (recomputed here from
/// scratch), every account is at or above its floor. Returns the problems found (none
/// when sound).
pub fn audit(conn: &mut impl AsLedgerConn) -> Result<Vec<String>, LedgerError> {
    let mut problems = Vec::new();
    for (account, balance, sum) in store::balances_recomputed(conn)? {
        if balance != sum {
            problems.push(format!(
                "{account} keeps a balance of {balance}, but its postings sum to {sum}"
            ));
        }
    }
    for (tx, currency, sum) in store::transaction_sums(conn)? {
        if sum != 0 {
            problems.push(format!("transaction {tx} sums to {sum} {currency}, not 0"));
        }
    }
    for line in trial_balance(conn)? {
        if let Some(floor) = line.kind.floor() {
            if line.balance_minor < floor {
                problems.push(format!(
                    "{} is at {}, below its floor of {floor}",
                    line.account, line.balance_minor
                ));
            }
        }
    }
    for (currency, sum) in sums_by_currency(&trial_balance(conn)?) {
        if sum != 0 {
            problems.push(format!("{currency} balances sum to {sum}, not 0"));
        }
    }
    Ok(problems)
}

/// How many transactions the ledger holds.
pub fn transaction_count(conn: &mut impl AsLedgerConn) -> Result<i64, LedgerError> {
    Ok(store::transaction_count(conn)?)
}

/// Runs `f` in a write transaction for callers that have none open (tools, tests):
/// an ordinary transaction on PostgreSQL, `BEGIN IMMEDIATE` on SQLite. Rolled back
/// when `f` fails.
pub fn with_write_tx<C, T, F>(conn: &mut C, f: F) -> Result<T, LedgerError>
where
    C: AsLedgerConn,
    F: FnOnce(&mut C) -> Result<T, LedgerError>,
{
    let sqlite = matches!(conn.ledger_conn(), LedgerConn::Sqlite(_));
    let begin = if sqlite { "BEGIN IMMEDIATE" } else { "BEGIN" };
    exec(conn, begin)?;
    match f(conn) {
        Ok(value) => {
            if let Err(e) = exec(conn, "COMMIT") {
                let _ = exec(conn, "ROLLBACK");
                return Err(e.into());
            }
            Ok(value)
        }
        Err(e) => {
            let _ = exec(conn, "ROLLBACK");
            Err(e)
        }
    }
}

fn exec(conn: &mut impl AsLedgerConn, sql: &str) -> diesel::QueryResult<()> {
    match conn.ledger_conn() {
        LedgerConn::Pg(c) => c.batch_execute(sql),
        LedgerConn::Sqlite(c) => c.batch_execute(sql),
    }
}
