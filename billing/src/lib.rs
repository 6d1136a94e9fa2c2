//! Lastmile billing: the money core the controller uses.
//!
//! - [`money`]: integer minor units with an ISO currency; never a float.
//! - [`ledger`]: the double-entry ledger: balanced transactions posted once per
//!   event, balances derived from postings, floors per account kind.
//! - [`movements`]: the product's movements of money (purchases, grants, a result's
//!   payment, payouts and their outcomes) as transactions.
//! - [`pricing`]: what a result costs and how the price is split.
//! - [`store`]: the ledger's tables and queries on PostgreSQL and SQLite; the caller
//!   lends its connection (and its open transaction) through [`store::AsLedgerConn`].
//!
//! Billing depends on `protocol` (check kinds, connection classes) and diesel, never on
//! the controller. Stripe (purchases by card, payouts through Connect) and the checks
//! against fake work come later (issue 5).

pub mod ledger;
pub mod money;
pub mod movements;
pub mod pricing;
pub mod store;

pub use ledger::{Account, AccountKind, BalanceLine, LedgerError, NewTransaction, Posted, Posting};
pub use money::{Currency, Money};
pub use store::{AsLedgerConn, LedgerConn};
