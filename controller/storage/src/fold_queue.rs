//! The `fold_queue` table: results accepted and not yet folded into their aggregates
//! and paid for. Entries are added by the transaction that accepts the results and
//! deleted by the transaction that folds them, so each accepted result is folded
//! exactly once.
//!
//! One entry holds the results one transaction accepted, whatever their runs (one row
//! per group commit, not per result or per run: the queue is written and deleted for
//! every accepted result, and a group commit's results are of many runs, each run's
//! agents reporting at their own moments). Which runs, and how many results of each,
//! the entry says in `runs` (JSON), for the readers that ask what a run still has
//! queued: [`QUEUED_RUNS`].

use std::collections::BTreeMap;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Text};

use crate::schema::fold_queue;
use crate::DbConn;

/// One queue entry: the results one transaction accepted.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = fold_queue, treat_none_as_default_value = false)]
pub struct Entry {
    /// The first of `assignment_ids`: the entry's key (each assignment is queued once).
    pub first_assignment_id: String,
    /// The entry's results' assignments, space-separated.
    pub assignment_ids: String,
    /// The results' runs: a JSON object of run id to how many of the entry's results
    /// are that run's.
    pub runs: String,
    /// How many results the entry holds.
    pub results: i32,
    /// When the results were received: their `received_at`.
    pub queued_at: i64,
}

/// The queued results of each run, as rows `(run_id TEXT, n BIGINT)`, one per run and
/// entry: a subquery for the statements that ask what runs still have queued, the same
/// on both backends (`json_each` of each entry's `runs`). It reads the whole queue:
/// seconds of results, a few entries (a group commit folds what it accepted at once).
pub const QUEUED_RUNS: &str = "SELECT j.key AS run_id, CAST(CAST(j.value AS TEXT) AS BIGINT) AS n \
     FROM fold_queue q, json_each(q.runs) j";

/// Groups results `(run id, assignment id)`, received at `queued_at` by one
/// transaction, into their queue entry: one, or none for no results.
pub fn entries<'a>(
    queued_at: i64,
    results: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<Entry> {
    let mut ids: Vec<&str> = Vec::new();
    let mut runs: BTreeMap<&str, i32> = BTreeMap::new();
    for (run_id, assignment_id) in results {
        ids.push(assignment_id);
        *runs.entry(run_id).or_default() += 1;
    }
    let Some(first) = ids.first() else {
        return Vec::new();
    };
    vec![Entry {
        first_assignment_id: (*first).to_owned(),
        assignment_ids: ids.join(" "),
        runs: serde_json::Value::Object(
            runs.into_iter()
                .map(|(run, n)| (run.to_owned(), n.into()))
                .collect(),
        )
        .to_string(),
        results: ids.len() as i32,
        queued_at,
    }]
}

/// Queues entries (inside the transaction that stores their results).
pub fn enqueue(conn: &mut DbConn, entries: &[Entry]) -> QueryResult<()> {
    crate::copy_rows!(conn, fold_queue::table, entries);
    Ok(())
}

/// When the oldest and the newest of the results taken were queued.
pub type QueuedSpan = (i64, i64);

/// A taken entry, as read back by [`take`].
#[derive(QueryableByName)]
struct Taken {
    #[diesel(sql_type = BigInt)]
    row_key: i64,
    #[diesel(sql_type = Text)]
    assignment_ids: String,
    #[diesel(sql_type = Integer)]
    results: i32,
    #[diesel(sql_type = BigInt)]
    queued_at: i64,
}

/// Takes queued entries, oldest first, until they hold `max` results or more (at least
/// one entry, however large), out of the queue for the caller's write transaction:
/// their results' assignment ids and when they were queued ([`QueuedSpan`]). They are
/// deleted by the same transaction, so a fold that rolls back leaves them queued and
/// one that commits has taken them exactly once. At most half of `max` entries are
/// looked at: an entry holds what one transaction accepted, one request's results when
/// requests come one at a time (a single result in the smallest), a group commit's
/// hundreds when they come fast.
///
/// On PostgreSQL one statement picks and deletes them: entries another transaction
/// holds are skipped (`FOR UPDATE SKIP LOCKED`), so several controllers fold side by
/// side without taking the same result twice, and the entries picked are deleted by
/// their physical address (`ctid`), a plan that does not depend on the statistics of a
/// table whose every row lives for seconds (a delete by key was once caught running
/// for most of a second). The entries looked at past `max` results stay locked until
/// the caller commits (other folders skip them meanwhile). SQLite's single writer does
/// the same with a select and a delete by `rowid`.
pub fn take(conn: &mut DbConn, max: i64) -> QueryResult<(Vec<String>, Option<QueuedSpan>)> {
    let look_at = (max / 2).max(1);
    let mut taken: Vec<Taken> = match conn {
        DbConn::Pg(c) => diesel::sql_query(
            "DELETE FROM fold_queue WHERE ctid = ANY(ARRAY( \
               SELECT ctid FROM ( \
                 SELECT ctid, results, \
                        SUM(results) OVER (ORDER BY queued_at ROWS UNBOUNDED PRECEDING) AS upto \
                   FROM (SELECT ctid, queued_at, results FROM fold_queue \
                          ORDER BY queued_at LIMIT $1 FOR UPDATE SKIP LOCKED) locked \
               ) running WHERE upto - results < $2)) \
             RETURNING 0::bigint AS row_key, assignment_ids, results, queued_at",
        )
        .bind::<BigInt, _>(look_at)
        .bind::<BigInt, _>(max)
        .load(c)?,
        DbConn::Sqlite(c) => {
            let looked_at: Vec<Taken> = diesel::sql_query(
                "SELECT rowid AS row_key, assignment_ids, results, queued_at FROM fold_queue \
                 ORDER BY queued_at LIMIT ?",
            )
            .bind::<BigInt, _>(look_at)
            .load(c)?;
            let mut results = 0;
            let taken: Vec<Taken> = looked_at
                .into_iter()
                .take_while(|t| {
                    let before = results;
                    results += i64::from(t.results);
                    before < max
                })
                .collect();
            for chunk in taken.chunks(crate::agents::KEYS_PER_LOOKUP) {
                let rows: Vec<String> = chunk.iter().map(|t| t.row_key.to_string()).collect();
                diesel::sql_query(format!(
                    "DELETE FROM fold_queue WHERE rowid IN ({})",
                    rows.join(", ")
                ))
                .execute(c)?;
            }
            taken
        }
    };
    taken.sort_by_key(|t| t.queued_at);
    let span = taken
        .first()
        .zip(taken.last())
        .map(|(first, last)| (first.queued_at, last.queued_at));
    let ids = taken
        .iter()
        .flat_map(|t| t.assignment_ids.split(' '))
        .map(str::to_owned)
        .collect();
    Ok((ids, span))
}

/// How many of a run's results are still waiting to be folded.
pub fn queued_in_run(conn: &mut DbConn, run_id: &str) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Queued {
        #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
        n: Option<i64>,
    }
    let queued: Queued = diesel::sql_query(format!(
        "SELECT CAST(SUM(n) AS BIGINT) AS n FROM ({QUEUED_RUNS}) q WHERE run_id = $1"
    ))
    .bind::<Text, _>(run_id)
    .get_result(conn)?;
    Ok(queued.n.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transactions_results_share_one_entry_that_counts_them_by_run() {
        let entries = entries(7, [("r1", "a"), ("r2", "b"), ("r1", "c"), ("r1", "d")]);
        let summary: Vec<(&str, &str, &str, i32, i64)> = entries
            .iter()
            .map(|e| {
                (
                    e.first_assignment_id.as_str(),
                    e.assignment_ids.as_str(),
                    e.runs.as_str(),
                    e.results,
                    e.queued_at,
                )
            })
            .collect();
        assert_eq!(summary, vec![("a", "a b c d", r#"{"r1":3,"r2":1}"#, 4, 7)]);
        assert!(super::entries(7, []).is_empty());
    }
}
