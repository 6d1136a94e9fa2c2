//! Owners delete checks and sites; history stays (migration `000026`).
//!
//! A deleted check or site keeps its row, marked `deleted_at`: runs, results,
//! aggregates, payments and the ledger refer to it. Storage's `get` and `list` leave
//! deleted rows out, so every owner-facing path answers 404 for them and the scheduler
//! never runs them. Above both `checks` and `sites` (a site's deletion deletes its
//! checks), which do not know about it.

use diesel::prelude::*;

use crate::clock::{now_us, Micros};
use crate::error::Result;
use lastmile_storage::schema::{alert_rules, checks, runs, sites};
use lastmile_storage::{write_tx, DbConn};

/// Deletes one of the owner's checks: it leaves the owner's lists and is never run
/// again; its open runs stop (their unfilled assignments are given up, so no credit
/// stays held; a result already leased is still accepted and paid); its alert rules go
/// (their open incidents resolve). Its runs, results, aggregates and payments stay.
pub fn delete_check(conn: &mut DbConn, owner_id: &str, id: &str) -> Result<()> {
    write_tx(conn, |c| {
        crate::checks::get(c, owner_id, id)?;
        stop_check(c, id, now_us())
    })
}

/// Deletes one of the owner's sites and its checks (as [`delete_check`]): no check can
/// be made on it again until it is added and verified anew.
pub fn delete_site(conn: &mut DbConn, owner_id: &str, id: &str) -> Result<()> {
    write_tx(conn, |c| {
        crate::sites::get(c, owner_id, id)?;
        let now = now_us();
        diesel::update(sites::table.find(id))
            .set(sites::deleted_at.eq(now))
            .execute(c)?;
        let live: Vec<String> = checks::table
            .filter(checks::site_id.eq(id))
            .filter(checks::deleted_at.is_null())
            .select(checks::id)
            .load(c)?;
        for check in live {
            stop_check(c, &check, now)?;
        }
        Ok(())
    })
}

/// Marks check `id` deleted at `now`, ends its open runs, deletes its alert rules,
/// inside the caller's transaction.
fn stop_check(conn: &mut DbConn, id: &str, now: Micros) -> Result<()> {
    diesel::update(checks::table.find(id))
        .set((
            checks::deleted_at.eq(now),
            checks::next_run_at.eq(None::<i64>),
        ))
        .execute(conn)?;
    diesel::update(
        runs::table
            .filter(runs::check_id.eq(id))
            .filter(runs::deadline_at.gt(now)),
    )
    .set(runs::deadline_at.eq(now))
    .execute(conn)?;
    diesel::update(
        alert_rules::table
            .filter(alert_rules::check_id.eq(id))
            .filter(alert_rules::deleted_at.is_null()),
    )
    .set(alert_rules::deleted_at.eq(now))
    .execute(conn)?;
    Ok(())
}
