//! The controller's PostgreSQL connections, when the server drops them (a restart, a
//! failover, an operator's `pg_terminate_backend`).
//!
//! The pool does not test a connection with `SELECT 1` before every use (that was a
//! round trip on top of every request's own queries); a dropped connection fails its
//! next statement and is then replaced, and the first one found dropped has the pool
//! test the others it holds idle. So a drop costs at most one failed request per
//! connection in use at the time (and one for the first found), and the controller
//! serves on.

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection, RunQueryDsl};
use lastmile_storage::{Backend, DbError};

use crate::support::{pg_admin_url, TestApp, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_recover_after_postgresql_drops_every_connection() {
    let db = TestDb::new(Backend::Postgres);
    let app = TestApp::start(&db).await;
    let owner = app.owner("owner");
    let list = || app.call("GET", "/api/v1/checks", Some(&owner), None);
    // Several requests at once, so the pool holds several connections.
    let answers = futures_util::future::join_all((0..8).map(|_| list())).await;
    assert!(answers.iter().all(|(status, _)| *status == 200));

    drop_every_connection(&db);
    served_again_after_at_most_one_failure_per_connection(&list).await;
    let pool = app.db().clone();
    app.controller.stop().await.unwrap();
    pool_refilled(&pool).await;
}

/// The connections were dropped before any of them had prepared the statement the next
/// requests send: each fails while preparing it, which diesel does not count as a
/// broken connection by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_recover_when_the_first_statement_after_the_drop_is_a_new_one() {
    let db = TestDb::new(Backend::Postgres);
    let app = TestApp::start(&db).await;
    let owner = app.owner("owner");
    // The owner's token is read (and then cached) on several connections; the checks
    // list has not been asked for yet.
    let answers = futures_util::future::join_all(
        (0..8).map(|_| app.call("GET", "/api/v1/me", Some(&owner), None)),
    )
    .await;
    assert!(answers.iter().all(|(status, _)| *status == 200));

    drop_every_connection(&db);
    let list = || app.call("GET", "/api/v1/checks", Some(&owner), None);
    served_again_after_at_most_one_failure_per_connection(&list).await;
    let pool = app.db().clone();
    app.controller.stop().await.unwrap();
    pool_refilled(&pool).await;
}

/// One dropped connection found has the pool test the others it holds idle. Without
/// that, the dropped ones the pool still held (it hands out the connection returned
/// last, and fresh ones opened after a failure went on top) failed requests whenever
/// concurrency first reached them, minutes later. Here: one failed piece of work, then
/// every connection of the pool at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_dropped_connection_found_retires_the_others_idle_in_the_pool() {
    let db = TestDb::new(Backend::Postgres);
    let pool = lastmile_storage::Db::open(&db.url, 4).unwrap();
    pool_refilled(&pool).await;
    drop_every_connection(&db);

    let first = pool
        .run(|c| c.batch_execute("SELECT 1").map_err(DbError::from))
        .await;
    assert!(
        first.is_err(),
        "the first work after the drop meets a dropped connection"
    );
    let failed = tokio::task::spawn_blocking(move || {
        let all: Vec<_> = (0..4).map(|_| pool.conn().unwrap()).collect();
        let failed = all
            .into_iter()
            .map(|mut c| c.batch_execute("SELECT 1"))
            .filter(Result::is_err)
            .count();
        (failed, pool)
    })
    .await
    .unwrap();
    let (failed, pool) = failed;
    assert_eq!(
        failed, 0,
        "dropped connections handed out after the first was found"
    );
    pool_refilled(&pool).await;
}

/// Waits (at most 20 s) until the pool has reopened every connection it dropped: it does
/// so on threads of its own, and a test process that exits while one of them is inside
/// libpq dies of SIGSEGV after its test passed (CI, once).
async fn pool_refilled(db: &lastmile_storage::Db) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while db.state().connections < db.max_size() {
        assert!(
            std::time::Instant::now() < deadline,
            "the pool did not reopen its connections: {:?}",
            db.state()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Terminates every backend of the test's database and waits (at most 10 s) until they
/// are gone: `pg_terminate_backend` only signals them, and a backend still running
/// answers the requests sent right after the "drop" (seen here: no request failed
/// until the last batches).
fn drop_every_connection(db: &TestDb) {
    #[derive(diesel::QueryableByName)]
    struct Pid {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
    }
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    let mut admin = PgConnection::establish(&pg_admin_url()).unwrap();
    let pids = |admin: &mut PgConnection, sql: &str| -> Vec<i32> {
        diesel::sql_query(sql)
            .load::<Pid>(admin)
            .unwrap()
            .into_iter()
            .map(|p| p.pid)
            .collect()
    };
    let running = format!("SELECT pid FROM pg_stat_activity WHERE datname = '{name}'");
    let dropped = pids(&mut admin, &running);
    assert!(
        !dropped.is_empty(),
        "the controller has connections to drop"
    );
    // One pid at a time: in a filter beside the database's name, PostgreSQL may call
    // `pg_terminate_backend` before it has checked the name.
    for pid in &dropped {
        pids(
            &mut admin,
            &format!("SELECT {pid} AS pid WHERE pg_terminate_backend({pid})"),
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pids(&mut admin, &running)
        .iter()
        .any(|pid| dropped.contains(pid))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "terminated backends still running"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

async fn served_again_after_at_most_one_failure_per_connection<F, Fut>(call: &F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = (u16, serde_json::Value)>,
{
    // 96 requests, 16 at a time (the pool's size in the tests' config), of which at most
    // one per pooled connection may fail: a dropped connection that the pool kept would
    // fail every request it served. Not "all failures first": the pool hands out the
    // connection returned last, so a dropped one can stay buried under the live ones
    // until a moment of concurrency reaches it (once after 48 requests, in CI).
    let mut failed = 0;
    for _ in 0..6 {
        for (status, body) in futures_util::future::join_all((0..16).map(|_| call())).await {
            match status {
                200 => {}
                500..=599 => failed += 1,
                other => panic!("answered {other}: {body}"),
            }
        }
    }
    assert!(
        failed <= 16,
        "{failed} of 96 requests failed after the drop"
    );
}

/// A server on this machine is reached without TLS when the URL says nothing of it
/// (`pg_url`), though the server offers it (Debian's does, with its own certificate)
/// and libpq's default would take it.
#[test]
fn the_pool_reaches_a_server_on_this_machine_without_tls() {
    let db = TestDb::new(Backend::Postgres);
    assert!(!db.url.contains("sslmode"), "the test URL chooses nothing");
    let encrypted = |conn: &mut PgConnection| -> bool {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
            "(SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
        ))
        .get_result(conn)
        .unwrap()
    };
    // As written, the URL gets TLS when the server offers it; where it does not, the
    // pool's connection could not be encrypted either, and there is nothing to show.
    if !encrypted(&mut PgConnection::establish(&db.url).unwrap()) {
        eprintln!("the test server offers no TLS: nothing to show");
        return;
    }
    let pool = lastmile_storage::Db::open(&db.url, 1).unwrap();
    let mut conn = pool.conn().unwrap();
    let lastmile_storage::DbConn::Pg(pg) = &mut *conn else {
        panic!("not PostgreSQL");
    };
    assert!(!encrypted(pg), "the pool's connection is encrypted");
}
