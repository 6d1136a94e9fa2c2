//! The ledger's tables and the queries on them, for PostgreSQL and SQLite.
//!
//! Billing owns its tables (`ledger_accounts`, `ledger_transactions`,
//! `ledger_postings`; the migration is `2026-11-25-000007_ledger` in the workspace's
//! `migrations/` folders) but not the connection: the caller hands over a connection
//! it may already have opened a transaction on, through [`AsLedgerConn`]. That is how
//! the controller posts a result's payment in the same database transaction that
//! stores the result, while the rules stay here and are tested on both backends
//! without the controller.
//!
//! Why an enum of the two concrete connections and not a generic `C: Connection`:
//! diesel's DSL needs a concrete backend to type-check a query, and the controller's
//! `MultiConnection` backend type lives in the controller (which billing must not
//! depend on). With [`LedgerConn`], each query is written once inside `on_backend!`
//! and compiled once per backend; the controller's connection enum maps onto it in
//! four lines.

use diesel::dsl::sql;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel::sqlite::SqliteConnection;

diesel::table! {
    /// Accounts; an account's balance is the sum of its postings, kept beside them in
    /// `balance_minor` (updated in the transaction that posts them).
    ledger_accounts (id) {
        id -> Text,
        kind -> Text,
        holder -> Nullable<Text>,
        currency -> Text,
        created_at -> BigInt,
        balance_minor -> BigInt,
    }
}

diesel::table! {
    /// Balanced movements, one per event (`event_key` is unique).
    ledger_transactions (id) {
        id -> Text,
        event_key -> Text,
        kind -> Text,
        memo -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    /// Signed amounts in minor units.
    ledger_postings (transaction_id, account_id) {
        transaction_id -> Text,
        account_id -> Text,
        amount_minor -> BigInt,
    }
}

diesel::joinable!(ledger_postings -> ledger_transactions (transaction_id));
diesel::joinable!(ledger_postings -> ledger_accounts (account_id));
diesel::allow_tables_to_appear_in_same_query!(
    ledger_accounts,
    ledger_transactions,
    ledger_postings
);
diesel::allow_columns_to_appear_in_same_group_by_clause!(
    ledger_postings::transaction_id,
    ledger_accounts::currency
);

/// A connection to either backend, borrowed for ledger work.
pub enum LedgerConn<'a> {
    Pg(&'a mut PgConnection),
    Sqlite(&'a mut SqliteConnection),
}

/// Anything the ledger can run on: the two diesel connections, and the controller's
/// connection enum (which implements this by matching its variants).
pub trait AsLedgerConn {
    /// The underlying connection, inside whatever transaction the caller has open.
    fn ledger_conn(&mut self) -> LedgerConn<'_>;
}

impl AsLedgerConn for PgConnection {
    fn ledger_conn(&mut self) -> LedgerConn<'_> {
        LedgerConn::Pg(self)
    }
}

impl AsLedgerConn for SqliteConnection {
    fn ledger_conn(&mut self) -> LedgerConn<'_> {
        LedgerConn::Sqlite(self)
    }
}

/// Runs `$body` with `$c` bound to the concrete connection, once per backend.
macro_rules! on_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn.ledger_conn() {
            LedgerConn::Pg($c) => $body,
            LedgerConn::Sqlite($c) => $body,
        }
    };
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = ledger_accounts)]
pub(crate) struct AccountRow {
    pub id: String,
    pub kind: String,
    pub holder: Option<String>,
    pub currency: String,
    pub created_at: i64,
    /// The running balance: the sum of the account's postings.
    pub balance_minor: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = ledger_transactions)]
pub(crate) struct TransactionRow {
    pub id: String,
    pub event_key: String,
    pub kind: String,
    pub memo: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = ledger_postings)]
pub(crate) struct PostingRow {
    pub transaction_id: String,
    pub account_id: String,
    pub amount_minor: i64,
}

/// The SQL sum of postings as a BIGINT on both backends (PostgreSQL's `SUM(bigint)`
/// is `numeric`).
const SUM_AMOUNT: &str = "CAST(COALESCE(SUM(ledger_postings.amount_minor), 0) AS BIGINT)";

/// Creates the accounts that do not exist yet.
pub(crate) fn ensure_accounts(
    conn: &mut impl AsLedgerConn,
    rows: &[AccountRow],
) -> QueryResult<()> {
    on_backend!(conn, |c| {
        for row in rows {
            diesel::insert_into(ledger_accounts::table)
                .values(row)
                .on_conflict_do_nothing()
                .execute(c)?;
        }
        Ok(())
    })
}

/// Locks the accounts' rows until the end of the caller's transaction, in id order
/// (so two transactions touching the same accounts cannot deadlock), and returns their
/// running balances. On SQLite the caller's `BEGIN IMMEDIATE` already holds the only
/// write lock.
pub(crate) fn lock_accounts(
    conn: &mut impl AsLedgerConn,
    ids: &[String],
) -> QueryResult<Vec<(String, i64)>> {
    let query = || {
        ledger_accounts::table
            .filter(ledger_accounts::id.eq_any(ids))
            .order(ledger_accounts::id)
            .select((ledger_accounts::id, ledger_accounts::balance_minor))
    };
    match conn.ledger_conn() {
        LedgerConn::Pg(c) => query().for_update().load(c),
        LedgerConn::Sqlite(c) => query().load(c),
    }
}

/// The transaction posted for `event_key`, if any.
pub(crate) fn find_transaction(
    conn: &mut impl AsLedgerConn,
    event_key: &str,
) -> QueryResult<Option<TransactionRow>> {
    on_backend!(conn, |c| ledger_transactions::table
        .filter(ledger_transactions::event_key.eq(event_key))
        .select(TransactionRow::as_select())
        .first(c)
        .optional())
}

/// The postings of one transaction, with their accounts.
pub(crate) fn postings_of(
    conn: &mut impl AsLedgerConn,
    transaction_id: &str,
) -> QueryResult<Vec<(PostingRow, AccountRow)>> {
    on_backend!(conn, |c| ledger_postings::table
        .inner_join(ledger_accounts::table)
        .filter(ledger_postings::transaction_id.eq(transaction_id))
        .order(ledger_postings::account_id)
        .select((PostingRow::as_select(), AccountRow::as_select()))
        .load(c))
}

/// Running balances of the given accounts (accounts that do not exist are absent).
pub(crate) fn balances_of(
    conn: &mut impl AsLedgerConn,
    ids: &[String],
) -> QueryResult<Vec<(String, i64)>> {
    on_backend!(conn, |c| ledger_accounts::table
        .filter(ledger_accounts::id.eq_any(ids))
        .select((ledger_accounts::id, ledger_accounts::balance_minor))
        .load(c))
}

/// Every account's running balance beside the sum of its postings, for audits: rows
/// of (account id, running balance, sum of postings).
pub(crate) fn balances_recomputed(
    conn: &mut impl AsLedgerConn,
) -> QueryResult<Vec<(String, i64, i64)>> {
    on_backend!(conn, |c| {
        let sums: std::collections::HashMap<String, i64> = ledger_postings::table
            .group_by(ledger_postings::account_id)
            .select((ledger_postings::account_id, sql::<BigInt>(SUM_AMOUNT)))
            .load::<(String, i64)>(c)?
            .into_iter()
            .collect();
        let accounts: Vec<(String, i64)> = ledger_accounts::table
            .order(ledger_accounts::id)
            .select((ledger_accounts::id, ledger_accounts::balance_minor))
            .load(c)?;
        Ok(accounts
            .into_iter()
            .map(|(id, balance)| {
                let sum = sums.get(&id).copied().unwrap_or(0);
                (id, balance, sum)
            })
            .collect())
    })
}

/// Writes a transaction and its postings, and moves the accounts' running balances by
/// them (the caller has locked the accounts).
pub(crate) fn insert_transaction(
    conn: &mut impl AsLedgerConn,
    tx: &TransactionRow,
    postings: &[PostingRow],
) -> QueryResult<()> {
    on_backend!(conn, |c| {
        diesel::insert_into(ledger_transactions::table)
            .values(tx)
            .execute(c)?;
        for p in postings {
            // Row by row: a multi-row insert on SQLite opens a transaction of its own,
            // which cannot nest in the caller's.
            diesel::insert_into(ledger_postings::table)
                .values(p)
                .execute(c)?;
            diesel::update(ledger_accounts::table.find(&p.account_id))
                .set(
                    ledger_accounts::balance_minor
                        .eq(ledger_accounts::balance_minor + p.amount_minor),
                )
                .execute(c)?;
        }
        Ok(())
    })
}

/// Every account with its running balance, optionally only one holder's.
pub(crate) fn accounts_with_balances(
    conn: &mut impl AsLedgerConn,
    holder: Option<&str>,
) -> QueryResult<Vec<(AccountRow, i64)>> {
    on_backend!(conn, |c| {
        let mut accounts = ledger_accounts::table
            .select(AccountRow::as_select())
            .order(ledger_accounts::id)
            .into_boxed();
        if let Some(h) = holder {
            accounts = accounts.filter(ledger_accounts::holder.eq(h));
        }
        let accounts: Vec<AccountRow> = accounts.load(c)?;
        Ok(accounts
            .into_iter()
            .map(|a| {
                let balance = a.balance_minor;
                (a, balance)
            })
            .collect())
    })
}

/// Every transaction's postings summed per currency (for audits and tests): rows of
/// (transaction id, currency, sum). A balanced ledger has only zero sums.
pub(crate) fn transaction_sums(
    conn: &mut impl AsLedgerConn,
) -> QueryResult<Vec<(String, String, i64)>> {
    on_backend!(conn, |c| ledger_postings::table
        .inner_join(ledger_accounts::table)
        .group_by((ledger_postings::transaction_id, ledger_accounts::currency))
        .select((
            ledger_postings::transaction_id,
            ledger_accounts::currency,
            sql::<BigInt>(SUM_AMOUNT),
        ))
        .load(c))
}

/// How many transactions the ledger holds.
pub(crate) fn transaction_count(conn: &mut impl AsLedgerConn) -> QueryResult<i64> {
    on_backend!(conn, |c| ledger_transactions::table.count().get_result(c))
}
