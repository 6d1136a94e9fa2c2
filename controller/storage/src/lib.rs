//! Storage: one diesel model layer over PostgreSQL and SQLite.
//!
//! # Approach
//!
//! [`DbConn`] is a `#[derive(diesel::MultiConnection)]` enum, so queries written with
//! diesel's DSL are written once and run on either backend. Its limits shape the schema:
//! only the SQL types both backends share are used (text ids, `BIGINT` microsecond
//! timestamps, `BOOLEAN`, `BLOB`/`BYTEA`). The few statements whose SQL differs
//! (`FOR UPDATE SKIP LOCKED`, upserts) are a `match` with one arm per backend, side by
//! side, in the module that needs them.
//!
//! The backend is picked from the URL scheme by [`Backend::from_url`], never by trying
//! each backend in turn (which the derive's own `establish` would do), so a typo in a
//! PostgreSQL URL is an error rather than a SQLite file with a strange name.
//!
//! Diesel is synchronous: every database call goes through [`Db::run`], which borrows a
//! pooled connection inside `tokio::task::spawn_blocking`, so actix workers never block.
//!
//! # Write transactions
//!
//! [`write_tx`] is the one way to write several rows atomically. On PostgreSQL it is an
//! ordinary transaction (callers lock rows they read-then-write with `FOR UPDATE`). On
//! SQLite it is `BEGIN IMMEDIATE`: SQLite has a single writer, and taking the write lock
//! up front means two writers queue on `busy_timeout` instead of one failing with
//! `SQLITE_BUSY` when it tries to upgrade a read lock.

/// Inserts `$rows` (a slice of one `Insertable` record type) into `$table` inside the
/// caller's write transaction: one statement per [`agents::BATCH_ROWS`] rows on
/// PostgreSQL; row by row on SQLite, where diesel wraps a multi-row insert in a
/// transaction of its own that cannot nest in the caller's `BEGIN IMMEDIATE` (in
/// process, a statement per row costs little). A macro because a multi-row insert
/// needs the concrete backend, which `MultiConnection` code cannot name generically.
#[macro_export]
macro_rules! insert_rows {
    ($conn:expr, $table:expr, $rows:expr) => {{
        use diesel::RunQueryDsl as _;
        match $conn {
            $crate::DbConn::Pg(c) => {
                for chunk in $rows.chunks($crate::agents::BATCH_ROWS) {
                    diesel::insert_into($table).values(chunk).execute(c)?;
                }
            }
            $crate::DbConn::Sqlite(c) => {
                for row in $rows {
                    diesel::insert_into($table).values(row).execute(c)?;
                }
            }
        }
    }};
}

/// Writes `$rows` as [`insert_rows!`] does, but with one binary `COPY` on PostgreSQL:
/// no statement to plan and no parameter to bind per column and row, for the tables
/// the accept path and the fold write a row a result to. Every field is written as it
/// is (`None` as `NULL`, never the column's default): only for record types that derive
/// `Insertable` with `treat_none_as_default_value = false`, or have no optional field.
#[macro_export]
macro_rules! copy_rows {
    ($conn:expr, $table:expr, $rows:expr) => {{
        use diesel::prelude::ExecuteCopyFromDsl as _;
        let rows = $rows;
        match $conn {
            $crate::DbConn::Pg(c) => {
                if !rows.is_empty() {
                    diesel::copy_from($table).from_insertable(rows).execute(c)?;
                }
            }
            conn @ $crate::DbConn::Sqlite(_) => $crate::insert_rows!(conn, $table, rows),
        }
    }};
}

/// Runs `$query` and hands each `$row` to `$each` (a `&mut dyn FnMut($row) -> Result<(),
/// E>`) as it arrives, stopping at the first error. On PostgreSQL the rows are read one
/// by one (libpq's single-row mode): a long answer (a report's cells, megabytes of
/// histograms) is worked on while PostgreSQL is still reading and sending the rest,
/// instead of after all of it has arrived. A macro for the same reason as
/// [`insert_rows!`]: the loading mode is the concrete backend's. `$query` is an
/// expression, written into each backend's arm (a selection like `as_select()` is typed
/// by backend).
#[macro_export]
macro_rules! for_each_row {
    ($conn:expr, $query:expr, $row:ty, $each:expr) => {{
        use diesel::RunQueryDsl as _;
        match $conn {
            $crate::DbConn::Pg(c) => {
                for row in $query.load_iter::<$row, diesel::pg::PgRowByRowLoadingMode>(c)? {
                    ($each)(row?)?;
                }
            }
            $crate::DbConn::Sqlite(c) => {
                for row in $query.load_iter::<$row, diesel::connection::DefaultLoadingMode>(c)? {
                    ($each)(row?)?;
                }
            }
        }
        Ok(())
    }};
}

pub mod clock;
pub mod pg_url;
pub mod prepared;
pub mod schema;

// Records and their queries, one module per table.
pub mod agents;
pub mod aggregates;
pub mod api_tokens;
pub mod assignments;
pub mod checks;
pub mod fold_queue;
pub mod isps;
pub mod logins;
pub mod owners;
pub mod payouts;
pub mod result_payments;
pub mod results;
pub mod runs;
pub mod sites;
pub mod stripe_accounts;
pub mod stripe_checkouts;
pub mod volunteers;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::{self, ManageConnection};
use diesel::result::QueryResult;
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

/// A connection to either backend.
#[derive(diesel::MultiConnection)]
pub enum DbConn {
    Pg(PgConnection),
    Sqlite(SqliteConnection),
}

/// The ledger (`lastmile-billing`) runs on the same connection, inside the caller's
/// transaction, so a payment commits with the event that caused it.
impl lastmile_billing::AsLedgerConn for DbConn {
    fn ledger_conn(&mut self) -> lastmile_billing::LedgerConn<'_> {
        match self {
            DbConn::Pg(c) => lastmile_billing::LedgerConn::Pg(c),
            DbConn::Sqlite(c) => lastmile_billing::LedgerConn::Sqlite(c),
        }
    }
}

/// Which database a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    /// `postgres://` and `postgresql://` are PostgreSQL; `sqlite://`, `file:` or a plain
    /// path are SQLite.
    pub fn from_url(url: &str) -> Backend {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }

    /// Display name for logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");

/// Storage errors as the domain layer sees them.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("no database connection available: {0}")]
    Pool(#[from] r2d2::PoolError),
    #[error("cannot open database: {0}")]
    Connect(String),
    #[error("cannot apply migrations: {0}")]
    Migration(String),
    #[error("database task failed: {0}")]
    Task(String),
    /// A record the caller named is not there (or not theirs): `what` for messages,
    /// `code` the stable error code the API answers with.
    #[error("{what} not found")]
    NotFound {
        what: &'static str,
        code: &'static str,
    },
}

/// Opens connections for the pool, choosing the backend from the URL.
#[derive(Debug, Clone)]
pub struct DbConnectionManager {
    url: String,
    backend: Backend,
    /// Sweeps of the pool running ([`sweep_idle`]): while one runs, a connection is
    /// tested before it is handed out.
    sweeps: Arc<AtomicUsize>,
}

impl ManageConnection for DbConnectionManager {
    type Connection = DbConn;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<DbConn, r2d2::Error> {
        match self.backend {
            Backend::Postgres => PgConnection::establish(&self.url)
                .map(DbConn::Pg)
                .map_err(r2d2::Error::ConnectionError),
            Backend::Sqlite => {
                let path = self.url.strip_prefix("sqlite://").unwrap_or(&self.url);
                let mut conn =
                    SqliteConnection::establish(path).map_err(r2d2::Error::ConnectionError)?;
                // busy_timeout first, so that the pragmas after it (switching to WAL
                // takes a lock) wait for a busy database instead of failing. WAL lets
                // readers work while one writer commits; foreign keys are off by
                // default in SQLite.
                conn.batch_execute(
                    "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
                )
                .map_err(r2d2::Error::QueryError)?;
                Ok(DbConn::Sqlite(conn))
            }
        }
    }

    /// Called on every checkout, and costs nothing unless a sweep runs: then one
    /// `SELECT 1`.
    fn is_valid(&self, conn: &mut DbConn) -> Result<(), r2d2::Error> {
        if self.sweeps.load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        conn.batch_execute("SELECT 1")
            .map_err(r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut DbConn) -> bool {
        r2d2::R2D2Connection::is_broken(conn)
    }
}

/// The shared connection pool. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: r2d2::Pool<DbConnectionManager>,
    backend: Backend,
    /// The manager's count of sweeps running.
    sweeps: Arc<AtomicUsize>,
}

impl Db {
    /// Connects to `url`, runs pending migrations, and returns the pool.
    pub fn open(url: &str, max_connections: u32) -> Result<Db, DbError> {
        let backend = Backend::from_url(url);
        let sweeps = Arc::new(AtomicUsize::new(0));
        let manager = DbConnectionManager {
            url: match backend {
                Backend::Postgres => {
                    pg_url::with_local_defaults(url, std::env::var("PGSSLMODE").ok().as_deref())
                }
                Backend::Sqlite => url.to_owned(),
            },
            backend,
            sweeps: sweeps.clone(),
        };
        // No `SELECT 1` before every checkout (r2d2's default): on PostgreSQL it was a
        // round trip on top of every request's own queries. `is_valid` tests only
        // while a sweep runs. A connection the server dropped fails its next
        // statement, which leaves libpq's transaction status unknown; diesel then marks
        // its transaction manager broken, `has_broken` says so and the pool replaces it,
        // and the first one found dropped has the others idle in the pool tested
        // ([`sweep_idle`]; `db_reconnects` in the integration tests).
        let pool = r2d2::Pool::builder()
            .max_size(max_connections.max(1))
            .test_on_check_out(true)
            .connection_timeout(Duration::from_secs(10))
            .build(manager)
            .map_err(|e| DbError::Connect(format!("{} ({})", e, redact(url))))?;
        let db = Db {
            pool,
            backend,
            sweeps,
        };
        db.migrate()?;
        Ok(db)
    }

    /// Which backend this pool talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies every pending embedded migration; returns how many ran.
    pub fn migrate(&self) -> Result<usize, DbError> {
        let mut conn = self.pool.get()?;
        let applied = match &mut *conn {
            DbConn::Pg(c) => c.run_pending_migrations(PG_MIGRATIONS).map(|v| v.len()),
            DbConn::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS).map(|v| v.len()),
        }
        .map_err(|e| DbError::Migration(e.to_string()))?;
        if applied > 0 {
            tracing::info!(applied, backend = self.backend.name(), "migrations applied");
        }
        Ok(applied)
    }

    /// How many connections the pool holds and how many of them are idle. The pool
    /// opens connections up to its size on threads of its own, also after it dropped
    /// broken ones.
    pub fn state(&self) -> r2d2::State {
        self.pool.state()
    }

    /// The most connections the pool holds.
    pub fn max_size(&self) -> u32 {
        self.pool.max_size()
    }

    /// A pooled connection for blocking code (CLI commands, benchmarks, tests).
    pub fn conn(&self) -> Result<r2d2::PooledConnection<DbConnectionManager>, DbError> {
        Ok(self.pool.get()?)
    }

    /// Runs blocking database work off the async threads.
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConn) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let (pool, sweeps) = (self.pool.clone(), self.sweeps.clone());
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get().map_err(DbError::from)?;
            let outcome = f(&mut conn);
            if outcome.is_err() && mark_if_dropped(&mut conn) {
                drop(conn);
                sweep_idle(&pool, &sweeps);
            }
            outcome
        })
        .await
        .map_err(|e| E::from(DbError::Task(e.to_string())))?
    }
}

/// After work that failed: on PostgreSQL, one `SELECT 1`, so that a connection the
/// server dropped is known as broken and the pool replaces it. diesel marks a connection
/// broken when a statement fails with libpq's transaction status unknown, but a
/// statement that failed while being prepared (the first use of a statement on that
/// connection) returns before diesel looks at the status, and the dead connection went
/// back to the pool to fail the next request with the same statement, and the next
/// (`db_reconnects` in the integration tests). Only on the error path: a success proves
/// the connection alive. True when the connection was dropped.
fn mark_if_dropped(conn: &mut DbConn) -> bool {
    matches!(conn, DbConn::Pg(_)) && conn.batch_execute("SELECT 1").is_err()
}

/// After a connection turned out dropped by the server: the others idle in the pool most
/// likely went with it (a restart, a failover). r2d2 hands out the connection returned
/// last, so a dropped one could stay buried under live ones and fail a request minutes
/// later, whenever load first reached it. Takes every idle connection out of the pool
/// once, each tested on the way (`is_valid`, while `sweeps` counts this sweep): the
/// dropped ones are closed (the pool opens new ones), the live ones go back.
fn sweep_idle(pool: &r2d2::Pool<DbConnectionManager>, sweeps: &AtomicUsize) {
    sweeps.fetch_add(1, Ordering::SeqCst);
    let mut live = Vec::new();
    // Bounded by the pool's size: connections it opens meanwhile are not swept twice.
    for _ in 0..pool.max_size() {
        match pool.try_get() {
            Some(conn) => live.push(conn),
            None => break,
        }
    }
    let swept = live.len();
    drop(live);
    sweeps.fetch_sub(1, Ordering::SeqCst);
    tracing::warn!(
        live = swept,
        "a database connection was dropped by the server: the pool's idle connections were tested"
    );
}

/// Runs `f` in one write transaction (see the module docs for the per-backend meaning).
/// `f` must not open transactions of its own.
pub fn write_tx<T, E, F>(conn: &mut DbConn, f: F) -> Result<T, E>
where
    F: FnOnce(&mut DbConn) -> Result<T, E>,
    E: From<diesel::result::Error>,
{
    match conn {
        DbConn::Pg(_) => conn.transaction(f),
        DbConn::Sqlite(_) => {
            conn.batch_execute("BEGIN IMMEDIATE")?;
            match f(conn) {
                Ok(value) => {
                    if let Err(e) = conn.batch_execute("COMMIT") {
                        let _ = conn.batch_execute("ROLLBACK");
                        return Err(e.into());
                    }
                    Ok(value)
                }
                Err(e) => {
                    let _ = conn.batch_execute("ROLLBACK");
                    Err(e)
                }
            }
        }
    }
}

/// `<column> = '<value>'`, or `<column> IN ('<value>', ...)` for several, with the
/// values written into the statement: for filters that should use a partial index
/// whose predicate names those values (bound as parameters, they leave PostgreSQL's
/// generic plan unable to prove the predicate, and that plan reads the whole table).
/// One value is written as `=`, as the predicates are: SQLite proves `state = 'leased'`
/// from `state = 'leased'` but not from `state IN ('leased')`. `column` is a quoted
/// `"table"."column"`, the values constants of the code, never outside input.
pub fn one_of_literals(
    column: &'static str,
    values: &[&'static str],
) -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    match values {
        [one] => diesel::dsl::sql(&format!("{column} = '{one}'")),
        _ => {
            let values: Vec<String> = values.iter().map(|v| format!("'{v}'")).collect();
            diesel::dsl::sql(&format!("{column} IN ({})", values.join(", ")))
        }
    }
}

/// Counts rows of a table-like query; a small helper for tests and metrics.
pub fn count_sql(conn: &mut DbConn, sql: &str) -> QueryResult<i64> {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    Ok(diesel::sql_query(sql).get_result::<Count>(conn)?.n)
}

/// A URL safe to print: the password, if any, is hidden.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}
