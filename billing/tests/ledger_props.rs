//! Property test of the ledger on SQLite (in memory) and PostgreSQL: random sequences
//! of purchases, grants, result payments, payouts started, completed, failed and
//! reversed, and repeated events, checked after every step against a model and the
//! ledger's own audit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection, SqliteConnection};
use lastmile_billing::ledger::{self, with_write_tx, LedgerError};
use lastmile_billing::money::{Currency, Money};
use lastmile_billing::movements;
use lastmile_billing::{AsLedgerConn, NewTransaction};
use proptest::prelude::*;

/// The ledger's migrations, in order: its tables, then running balances.
const SQLITE_SCHEMA: [&str; 2] = [
    include_str!("../../migrations/sqlite/2026-11-25-000007_ledger/up.sql"),
    include_str!("../../migrations/sqlite/2026-12-05-000019_ledger_balances/up.sql"),
];
const PG_SCHEMA: [&str; 2] = [
    include_str!("../../migrations/postgres/2026-11-25-000007_ledger/up.sql"),
    include_str!("../../migrations/postgres/2026-12-05-000019_ledger_balances/up.sql"),
];

#[derive(Debug, Clone)]
enum Op {
    Purchase {
        owner: u8,
        minor: i64,
        eur: bool,
        event: u8,
    },
    Grant {
        owner: u8,
        minor: i64,
        event: u8,
    },
    PayResult {
        owner: u8,
        volunteer: u8,
        minor: i64,
        eur: bool,
        assignment: u8,
    },
    PayoutStart {
        volunteer: u8,
        minor: i64,
        payout: u8,
    },
    PayoutComplete {
        payout: u8,
    },
    PayoutFail {
        payout: u8,
    },
    PayoutReverse {
        payout: u8,
    },
    /// The same event again, exactly as before.
    Repeat {
        index: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3u8, 1..2_000i64, any::<bool>(), 0..12u8).prop_map(|(owner, minor, eur, event)| {
            Op::Purchase {
                owner,
                minor,
                eur,
                event,
            }
        }),
        (0..3u8, 1..2_000i64, 0..12u8).prop_map(|(owner, minor, event)| Op::Grant {
            owner,
            minor,
            event
        }),
        (0..3u8, 0..3u8, 1..300i64, any::<bool>(), 0..40u8).prop_map(
            |(owner, volunteer, minor, eur, assignment)| Op::PayResult {
                owner,
                volunteer,
                minor,
                eur,
                assignment
            }
        ),
        (0..3u8, 1..400i64, 0..10u8).prop_map(|(volunteer, minor, payout)| Op::PayoutStart {
            volunteer,
            minor,
            payout
        }),
        (0..10u8).prop_map(|payout| Op::PayoutComplete { payout }),
        (0..10u8).prop_map(|payout| Op::PayoutFail { payout }),
        (0..10u8).prop_map(|payout| Op::PayoutReverse { payout }),
        any::<usize>().prop_map(|index| Op::Repeat { index }),
    ]
}

fn cur(eur: bool) -> Currency {
    if eur {
        Currency::EUR
    } else {
        Currency::USD
    }
}

/// What the test remembers of each payout it started (the caller's payout table).
#[derive(Debug, Clone)]
struct Payout {
    volunteer: String,
    amount: Money,
    completed: bool,
}

/// Turns an op into the transaction the product would post, using the payouts table
/// for settle/reverse (as the payout code will). `None`: nothing to post.
fn transaction(
    op: &Op,
    payouts: &BTreeMap<u8, Payout>,
    history: &[NewTransaction],
) -> Option<NewTransaction> {
    let owner = |i: u8| format!("owner-{i}");
    let volunteer = |i: u8| format!("volunteer-{i}");
    Some(match *op {
        Op::Purchase {
            owner: o,
            minor,
            eur,
            event,
        } => movements::purchase(
            &owner(o),
            Money::new(minor, cur(eur)),
            &format!("pi_{event}"),
        ),
        Op::Grant {
            owner: o,
            minor,
            event,
        } => movements::grant(
            &owner(o),
            Money::new(minor, Currency::USD),
            &format!("g{event}"),
        ),
        Op::PayResult {
            owner: o,
            volunteer: v,
            minor,
            eur,
            assignment,
        } => movements::pay_result(
            &owner(o),
            &volunteer(v),
            Money::new(minor, cur(eur)),
            &format!("a{assignment}"),
        ),
        Op::PayoutStart {
            volunteer: v,
            minor,
            payout,
        } => match payouts.get(&payout) {
            // A payout id is started once; a second start is the same event again.
            Some(p) => movements::payout_started(&p.volunteer, p.amount, &format!("po{payout}")),
            None => movements::payout_started(
                &volunteer(v),
                Money::new(minor, Currency::USD),
                &format!("po{payout}"),
            ),
        },
        Op::PayoutComplete { payout } => {
            let p = payouts.get(&payout)?;
            movements::payout_completed(&p.volunteer, p.amount, &format!("po{payout}"))
        }
        Op::PayoutFail { payout } => {
            let p = payouts.get(&payout)?;
            movements::payout_failed(&p.volunteer, p.amount, &format!("po{payout}"))
        }
        Op::PayoutReverse { payout } => {
            let p = payouts.get(&payout).filter(|p| p.completed)?;
            movements::payout_reversed(&p.volunteer, p.amount, &format!("po{payout}"))
        }
        Op::Repeat { index } => {
            if history.is_empty() {
                return None;
            }
            history[index % history.len()].clone()
        }
    })
}

/// Runs `ops` against the ledger on `conn`, checking every step.
fn check_sequence<C: AsLedgerConn>(conn: &mut C, ops: &[Op]) -> Result<(), TestCaseError> {
    // The model: balances by account id, the events posted, the payouts started.
    let mut model: BTreeMap<String, (i64, Option<i64>)> = BTreeMap::new();
    let mut posted: BTreeSet<String> = BTreeSet::new();
    let mut payouts: BTreeMap<u8, Payout> = BTreeMap::new();
    let mut history: Vec<NewTransaction> = Vec::new();
    for op in ops {
        let Some(tx) = transaction(op, &payouts, &history) else {
            continue;
        };
        let count_before = ledger::transaction_count(conn).unwrap();
        let result = with_write_tx(conn, |c| ledger::post(c, &tx));
        let duplicate = posted.contains(&tx.event_key);
        let below_floor = !duplicate
            && tx.postings.iter().any(|p| {
                let (balance, floor) = model.get(&p.account.id()).copied().unwrap_or((0, None));
                let floor = floor.or(p.account.kind.floor());
                floor.is_some_and(|f| p.amount_minor < 0 && balance + p.amount_minor < f)
            });
        match result {
            Ok(done) => {
                prop_assert!(!below_floor, "{op:?} should have been refused: {tx:?}");
                prop_assert_eq!(done.duplicate, duplicate, "{:?}", op);
                if duplicate {
                    prop_assert_eq!(ledger::transaction_count(conn).unwrap(), count_before);
                    prop_assert_eq!(&done.transaction.event_key, &tx.event_key);
                } else {
                    prop_assert_eq!(ledger::transaction_count(conn).unwrap(), count_before + 1);
                    posted.insert(tx.event_key.clone());
                    history.push(tx.clone());
                    for p in &tx.postings {
                        let entry = model
                            .entry(p.account.id())
                            .or_insert((0, p.account.kind.floor()));
                        entry.0 += p.amount_minor;
                    }
                    match (op, done.transaction.kind.as_str()) {
                        (
                            Op::PayoutStart {
                                volunteer,
                                minor,
                                payout,
                            },
                            _,
                        ) => {
                            payouts.entry(*payout).or_insert(Payout {
                                volunteer: format!("volunteer-{volunteer}"),
                                amount: Money::new(*minor, Currency::USD),
                                completed: false,
                            });
                        }
                        (Op::PayoutComplete { payout }, "payout_completed") => {
                            if let Some(p) = payouts.get_mut(payout) {
                                p.completed = true;
                            }
                        }
                        _ => {}
                    }
                }
            }
            Err(LedgerError::BelowFloor { .. }) => {
                prop_assert!(below_floor, "{op:?} was refused but fits: {tx:?}");
                prop_assert_eq!(ledger::transaction_count(conn).unwrap(), count_before);
            }
            Err(e) => return Err(TestCaseError::fail(format!("{op:?}: {e}"))),
        }
        // After every step: the stored ledger agrees with the model and is sound.
        let lines = ledger::trial_balance(conn).unwrap();
        for line in &lines {
            let expected = model.get(&line.account).map_or(0, |m| m.0);
            prop_assert_eq!(line.balance_minor, expected, "{}", line.account);
        }
        for (currency, sum) in ledger::sums_by_currency(&lines) {
            prop_assert_eq!(sum, 0, "{} does not sum to zero", currency);
        }
        let problems = ledger::audit(conn).unwrap();
        prop_assert!(problems.is_empty(), "{problems:?}");
    }
    Ok(())
}

fn sqlite() -> SqliteConnection {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    for sql in SQLITE_SCHEMA {
        conn.batch_execute(sql).unwrap();
    }
    conn
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn ledger_stays_balanced_and_above_floors_on_sqlite(ops in prop::collection::vec(op(), 1..60)) {
        check_sequence(&mut sqlite(), &ops)?;
    }
}

/// A fresh PostgreSQL database with the ledger's tables, dropped on drop.
struct PgDb {
    name: String,
    conn: PgConnection,
}

fn pg_admin_url() -> String {
    std::env::var("LASTMILE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

impl PgDb {
    fn new() -> PgDb {
        let admin = pg_admin_url();
        let name = format!("lastmile_ledger_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::establish(&admin)
            .unwrap_or_else(|e| panic!("PostgreSQL must be running at {admin}: {e}"));
        conn.batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
        let mut conn = PgConnection::establish(&format!("{base}/{name}")).unwrap();
        for sql in PG_SCHEMA {
            conn.batch_execute(sql).unwrap();
        }
        PgDb { name, conn }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&pg_admin_url()) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

proptest! {
    // Fewer cases: each one creates a database.
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn ledger_stays_balanced_and_above_floors_on_postgres(ops in prop::collection::vec(op(), 1..60)) {
        let mut db = PgDb::new();
        check_sequence(&mut db.conn, &ops)?;
    }
}

#[test]
fn an_unbalanced_transaction_is_refused_and_writes_nothing() {
    let mut conn = sqlite();
    let mut tx = movements::grant("o", Money::new(100, Currency::USD), "g1");
    tx.postings[1].amount_minor = 99;
    let err = with_write_tx(&mut conn, |c| ledger::post(c, &tx)).unwrap_err();
    assert!(err.to_string().contains("does not balance"), "{err}");
    assert_eq!(ledger::transaction_count(&mut conn).unwrap(), 0);
    assert!(ledger::trial_balance(&mut conn).unwrap().is_empty());
}

#[test]
fn spending_more_credit_than_the_owner_has_is_refused_with_the_balance_named() {
    let mut conn = sqlite();
    with_write_tx(&mut conn, |c| {
        ledger::post(
            c,
            &movements::grant("o", Money::new(10, Currency::USD), "g1"),
        )
    })
    .unwrap();
    let pay = movements::pay_result("o", "v", Money::new(11, Currency::USD), "a1");
    let err = with_write_tx(&mut conn, |c| ledger::post(c, &pay)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "owner_credit:o:usd has 10 minor units; taking 11 would go below its floor of 0"
    );
    assert_eq!(ledger::transaction_count(&mut conn).unwrap(), 1);
    let pay = movements::pay_result("o", "v", Money::new(10, Currency::USD), "a1");
    let posted = with_write_tx(&mut conn, |c| ledger::post(c, &pay)).unwrap();
    assert!(!posted.duplicate);
    let again = with_write_tx(&mut conn, |c| ledger::post(c, &pay)).unwrap();
    assert!(again.duplicate);
    assert_eq!(again.transaction.id, posted.transaction.id);
    let volunteer = lastmile_billing::Account::volunteer_earnings("v", Currency::USD);
    assert_eq!(ledger::balance(&mut conn, &volunteer).unwrap().minor, 8);
}

#[test]
fn a_running_balance_that_disagrees_with_its_postings_is_reported_by_the_audit() {
    let mut conn = sqlite();
    with_write_tx(&mut conn, |c| {
        ledger::post(
            c,
            &movements::grant("o", Money::new(100, Currency::USD), "g1"),
        )
    })
    .unwrap();
    assert!(ledger::audit(&mut conn).unwrap().is_empty());
    conn.batch_execute(
        "UPDATE ledger_accounts SET balance_minor = balance_minor + 1 \
         WHERE id = 'owner_credit:o:usd'",
    )
    .unwrap();
    let problems = ledger::audit(&mut conn).unwrap();
    assert!(
        problems.contains(
            &"owner_credit:o:usd keeps a balance of 101, but its postings sum to 100".to_owned()
        ),
        "{problems:?}"
    );
}

#[test]
fn the_migration_to_running_balances_starts_them_at_the_sum_of_the_postings() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    conn.batch_execute(SQLITE_SCHEMA[0]).unwrap();
    // A ledger written before running balances: accounts and postings only.
    conn.batch_execute(
        "INSERT INTO ledger_accounts (id, kind, holder, currency, created_at) VALUES \
           ('owner_credit:o:usd', 'owner_credit', 'o', 'usd', 1), \
           ('operator_grants:usd', 'operator_grants', NULL, 'usd', 1), \
           ('volunteer_earnings:v:usd', 'volunteer_earnings', 'v', 'usd', 1); \
         INSERT INTO ledger_transactions (id, event_key, kind, memo, created_at) VALUES \
           ('t1', 'grant:g1', 'grant', '', 1), ('t2', 'grant:g2', 'grant', '', 2); \
         INSERT INTO ledger_postings (transaction_id, account_id, amount_minor) VALUES \
           ('t1', 'operator_grants:usd', -70), ('t1', 'owner_credit:o:usd', 70), \
           ('t2', 'operator_grants:usd', -30), ('t2', 'owner_credit:o:usd', 30);",
    )
    .unwrap();
    conn.batch_execute(SQLITE_SCHEMA[1]).unwrap();
    let owner = lastmile_billing::Account::owner_credit("o", Currency::USD);
    assert_eq!(ledger::balance(&mut conn, &owner).unwrap().minor, 100);
    let volunteer = lastmile_billing::Account::volunteer_earnings("v", Currency::USD);
    assert_eq!(ledger::balance(&mut conn, &volunteer).unwrap().minor, 0);
    assert!(ledger::audit(&mut conn).unwrap().is_empty());
}

#[test]
fn concurrent_posts_on_postgres_respect_floors_and_event_keys() {
    let mut db = PgDb::new();
    with_write_tx(&mut db.conn, |c| {
        ledger::post(
            c,
            &movements::grant("o", Money::new(50, Currency::USD), "g"),
        )
    })
    .unwrap();
    let base = pg_admin_url().rsplit_once('/').unwrap().0.to_owned();
    let url = format!("{base}/{}", db.name);
    // Eight payments of 10 from a credit of 50, each also racing a twin with the same
    // event key: five events are paid, once each.
    let outcomes: Vec<Result<bool, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let url = url.clone();
                s.spawn(move || {
                    let mut conn = PgConnection::establish(&url).unwrap();
                    let pay = movements::pay_result(
                        "o",
                        "v",
                        Money::new(10, Currency::USD),
                        &format!("a{}", i / 2),
                    );
                    with_write_tx(&mut conn, |c| ledger::post(c, &pay))
                        .map(|p| p.duplicate)
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let paid = outcomes.iter().filter(|o| **o == Ok(false)).count();
    let refused = outcomes
        .iter()
        .filter(|o| o.as_ref().is_err_and(|e| e.contains("below its floor")))
        .count();
    assert_eq!(paid, 5, "{outcomes:?}");
    assert_eq!(
        paid + refused + outcomes.iter().filter(|o| **o == Ok(true)).count(),
        16
    );
    let credit = lastmile_billing::Account::owner_credit("o", Currency::USD);
    assert_eq!(ledger::balance(&mut db.conn, &credit).unwrap().minor, 0);
    assert!(ledger::audit(&mut db.conn).unwrap().is_empty());
}
