//! The `fold_queue` table: results accepted and not yet folded into their aggregates
//! and paid for. Rows are added by the transaction that accepts a result and deleted by
//! the transaction that folds it, so each accepted result is folded exactly once.

use diesel::prelude::*;

use crate::schema::fold_queue;
use crate::DbConn;

/// One queued result.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = fold_queue, treat_none_as_default_value = false)]
pub struct Queued {
    pub assignment_id: String,
    pub run_id: String,
    pub queued_at: i64,
}

/// Queues results (inside the transaction that stores them).
pub fn enqueue(conn: &mut DbConn, rows: &[Queued]) -> QueryResult<()> {
    crate::copy_rows!(conn, fold_queue::table, rows);
    Ok(())
}

/// When the oldest and the newest of the results taken were queued.
pub type QueuedSpan = (i64, i64);

/// Takes up to `max` queued results, oldest first, out of the queue for the caller's
/// write transaction: their assignment ids and when they were queued ([`QueuedSpan`]).
/// They are deleted by the same transaction, so a fold that rolls back leaves them
/// queued and one that commits has taken them exactly once.
///
/// On PostgreSQL one statement picks and deletes them: rows another transaction holds
/// are skipped (`FOR UPDATE SKIP LOCKED`), so several controllers fold side by side
/// without taking the same result twice, and the rows picked are deleted by their
/// physical address (`ctid`), a plan that does not depend on the statistics of a table
/// whose every row lives for seconds (a delete by key was once caught running for most
/// of a second). SQLite's single writer does the same with a select and a delete.
pub fn take(conn: &mut DbConn, max: i64) -> QueryResult<(Vec<String>, Option<QueuedSpan>)> {
    let rows: Vec<(String, i64)> = match conn {
        DbConn::Pg(c) => {
            #[derive(QueryableByName)]
            struct Taken {
                #[diesel(sql_type = diesel::sql_types::Text)]
                assignment_id: String,
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                queued_at: i64,
            }
            let mut taken: Vec<Taken> = diesel::sql_query(
                "DELETE FROM fold_queue WHERE ctid = ANY(ARRAY( \
                   SELECT ctid FROM fold_queue ORDER BY queued_at LIMIT $1 \
                   FOR UPDATE SKIP LOCKED)) \
                 RETURNING assignment_id, queued_at",
            )
            .bind::<diesel::sql_types::BigInt, _>(max)
            .load(c)?;
            taken.sort_by_key(|t| t.queued_at);
            taken
                .into_iter()
                .map(|t| (t.assignment_id, t.queued_at))
                .collect()
        }
        DbConn::Sqlite(c) => {
            let rows: Vec<(String, i64)> = fold_queue::table
                .order(fold_queue::queued_at)
                .limit(max)
                .select((fold_queue::assignment_id, fold_queue::queued_at))
                .load(c)?;
            for chunk in rows.chunks(crate::agents::KEYS_PER_LOOKUP) {
                let ids = chunk.iter().map(|r| r.0.as_str());
                diesel::delete(fold_queue::table.filter(fold_queue::assignment_id.eq_any(ids)))
                    .execute(c)?;
            }
            rows
        }
    };
    let span = rows
        .first()
        .zip(rows.last())
        .map(|(first, last)| (first.1, last.1));
    Ok((rows.into_iter().map(|r| r.0).collect(), span))
}

/// How many of a run's results are still waiting to be folded.
pub fn queued_in_run(conn: &mut DbConn, run_id: &str) -> QueryResult<i64> {
    fold_queue::table
        .filter(fold_queue::run_id.eq(run_id))
        .count()
        .get_result(conn)
}
