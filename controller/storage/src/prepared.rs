//! Raw SQL kept prepared on its connection, as the query builder's own statements are.
//!
//! Diesel caches a statement per connection (PostgreSQL parses it once, and may plan it
//! once) only when it knows the statement's text is one of a bounded set. It cannot
//! know that of `diesel::sql_query` or of a query holding a `diesel::dsl::sql` fragment,
//! so it sends those unnamed, and PostgreSQL parses and plans them on every call: about
//! half of a lease's 0.9 ms of PostgreSQL time (`bench ingest --lease`, measured with
//! `pg_stat_statements.track_planning`), the larger part of the peers' read in the
//! accept path. [`Prepared`] says it for them.

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::{QueryResult, RunQueryDsl};

/// A statement whose SQL text is one of a few fixed ones (a constant, or one text per
/// backend), kept prepared on the connection. Never for text that carries values (a
/// number inlined, a list as long as its input): every distinct text would stay
/// prepared for the connection's life.
///
/// Once prepared, PostgreSQL plans the first five calls for their parameters and then
/// keeps one generic plan if it costs no more than those did. So:
/// - a statement that leans on a partial index must name the index's predicate in its
///   text (a literal), not as a parameter, or the generic plan cannot use the index;
/// - only for statements with one sensible plan whatever the tables' sizes (a probe by
///   key or by an index's prefix). The generic plan is kept until the tables are
///   analyzed again: the lease's list of candidate runs, a join of four tables, kept the
///   plan it was given while they were nearly empty and cost 4.2 ms a call instead of
///   0.3 planned each call (`bench ingest --lease`), so it stays unprepared, as does
///   the fold queue's take (a table of seconds of results that a backlog can grow to
///   millions of rows). The statements diesel caches by itself (every `SELECT` of
///   the query builder) have always leaned on the same thing: autovacuum's analyze
///   (PostgreSQL's default) remakes the plans as the tables grow.
///
/// Run it with `load` or `get_result(s)`, which hand diesel the statement itself.
/// `execute` hands it a reference, through which diesel asks the wrapped statement
/// whether it may be cached, and an `UPDATE` or upsert always says no: such a
/// statement kept prepared says `RETURNING` something and is loaded.
#[derive(Debug, Clone, Copy)]
pub struct Prepared<T>(pub T);

impl<T, DB> QueryFragment<DB> for Prepared<T>
where
    DB: Backend,
    T: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &DB) -> QueryResult<bool> {
        Ok(true)
    }
}

/// No static id: the statement cache keys it by its SQL text and bind types.
impl<T> QueryId for Prepared<T> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<T: Query> Query for Prepared<T> {
    type SqlType = T::SqlType;
}

impl<T, Conn> RunQueryDsl<Conn> for Prepared<T> {}
