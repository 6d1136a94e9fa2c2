//! Owners' check lists served from memory until their checks change.
//!
//! Dashboards and scripts poll `GET /api/v1/checks`. Answered with a query each time,
//! it was 0.14–0.20x of an actix-web hello world on PostgreSQL (`bench http`), below
//! PostgreSQL's own answer to the statement: the hop to a blocking thread and the
//! round trip cost more than the rest of the call. A list read from the database is
//! kept here, as the API serves it, until one of the owner's checks changes:
//!
//! - the replica that changes them forgets the owner's list at once (every handler
//!   that writes a check calls [`CheckLists::forget`] after the write), so an owner
//!   reads their own writes;
//! - every replica learns of writes made anywhere else — another replica, the
//!   scheduler moving a next run time, an operator's SQL — from `checks.changed_at`,
//!   which database triggers stamp on every insert and update (migration 000043), read
//!   by a [`ChangeFeed`] every second: a list is at most about a second behind
//!   another replica's write.
//!
//! A read that raced a write must not be kept: [`CheckLists::begin`] takes the epoch
//! before the read, and [`CheckLists::keep`] keeps what it read only if nothing was
//! forgotten since (the write may have committed after the read began).
//!
//! Bounded: at most `capacity` checks are held over all lists; a list that would go
//! past it empties the cache first (the next call of each owner costs one query).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use lastmile_storage::checks::Change;

use crate::clock::Micros;
use crate::error::Result;
use lastmile_storage::DbConn;

struct Held<L> {
    list: L,
    checks: usize,
}

struct Inner<L> {
    /// Moves on at every forgetting; a read that began at another epoch is not kept.
    epoch: u64,
    lists: HashMap<String, Held<L>>,
    /// Checks held over all lists.
    checks: usize,
}

/// Owners' check lists (`L`, e.g. the JSON the API answers with), by owner id.
pub struct CheckLists<L> {
    capacity: usize,
    inner: Mutex<Inner<L>>,
}

/// A read of an owner's list in progress: see [`CheckLists::begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    epoch: u64,
}

impl<L: Clone> CheckLists<L> {
    /// A cache holding at most `capacity` checks over all lists (0 holds none).
    pub fn new(capacity: usize) -> CheckLists<L> {
        CheckLists {
            capacity,
            inner: Mutex::new(Inner {
                epoch: 0,
                lists: HashMap::new(),
                checks: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<L>> {
        // Entries are replaced whole: a panic elsewhere leaves nothing half-written.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The owner's list, if held.
    pub fn get(&self, owner_id: &str) -> Option<L> {
        self.lock().lists.get(owner_id).map(|h| h.list.clone())
    }

    /// Call before reading a list from the database, and hand the answer to
    /// [`CheckLists::keep`] with what was read.
    pub fn begin(&self) -> Reading {
        Reading {
            epoch: self.lock().epoch,
        }
    }

    /// Holds `list` (of `checks` checks) for the owner, unless something was forgotten
    /// since `reading` began (the list may predate that write) or it cannot fit.
    /// Returns whether it is held.
    pub fn keep(&self, owner_id: &str, reading: Reading, list: L, checks: usize) -> bool {
        // An empty list takes room too (its owner's entry).
        let checks = checks.max(1);
        let mut inner = self.lock();
        if inner.epoch != reading.epoch || checks > self.capacity {
            return false;
        }
        if let Some(old) = inner.lists.remove(owner_id) {
            inner.checks -= old.checks;
        }
        if inner.checks + checks > self.capacity {
            inner.lists.clear();
            inner.checks = 0;
        }
        inner.checks += checks;
        inner
            .lists
            .insert(owner_id.to_owned(), Held { list, checks });
        true
    }

    /// Forgets the lists of these owners: one of their checks was written.
    pub fn forget<'a>(&self, owner_ids: impl IntoIterator<Item = &'a str>) {
        let mut inner = self.lock();
        inner.epoch += 1;
        for owner_id in owner_ids {
            if let Some(old) = inner.lists.remove(owner_id) {
                inner.checks -= old.checks;
            }
        }
    }

    /// Forgets every list (more writes than the feed reads at once).
    pub fn forget_all(&self) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.lists.clear();
        inner.checks = 0;
    }

    /// Lists held now.
    pub fn len(&self) -> usize {
        self.lock().lists.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes are read again for this long after their stamp: a transaction that stamped a
/// check may commit up to this much after a later stamp was already read.
pub const CHANGE_MARGIN_US: Micros = 10_000_000;

/// Writes read at most per look; past it, every list is forgotten.
const CHANGES_PER_LOOK: usize = 10_000;

/// Reads the writes to checks since it last looked and forgets the lists they change.
/// Every write is acted on once: the feed remembers the (check, stamp) pairs of the last
/// [`CHANGE_MARGIN_US`], which it reads again in case an older transaction committed
/// late. Its window is in the database's clock (the stamps'), never the replica's.
#[derive(Debug, Default)]
pub struct ChangeFeed {
    /// Looks from here on; `None` until the first look.
    since: Option<Micros>,
    /// The latest stamp seen of each check written within the window.
    seen: HashMap<String, Micros>,
}

impl ChangeFeed {
    pub fn new() -> ChangeFeed {
        ChangeFeed::default()
    }

    /// One look: forgets the lists of owners whose checks were written since the last.
    pub fn poll<L: Clone>(&mut self, conn: &mut DbConn, lists: &CheckLists<L>) -> Result<()> {
        let since = match self.since {
            Some(since) => since,
            None => lastmile_storage::checks::last_change(conn)?.unwrap_or(0) - CHANGE_MARGIN_US,
        };
        let changes =
            lastmile_storage::checks::changed_since(conn, since, CHANGES_PER_LOOK as i64)?;
        self.take(since, &changes, lists);
        Ok(())
    }

    /// Acts on `changes`, the writes stamped at or after `since`, oldest first.
    fn take<L: Clone>(&mut self, since: Micros, changes: &[Change], lists: &CheckLists<L>) {
        let mut owners = HashSet::new();
        for change in changes {
            let seen = self.seen.entry(change.id.clone()).or_insert(Micros::MIN);
            if change.changed_at > *seen {
                *seen = change.changed_at;
                owners.insert(change.owner_id.as_str());
            }
        }
        if changes.len() >= CHANGES_PER_LOOK {
            // More than one look reads: the rest are not known, so nothing is kept.
            lists.forget_all();
        } else if !owners.is_empty() {
            lists.forget(owners);
        }
        let latest = changes.last().map_or(since, |c| c.changed_at);
        let since = since.max(latest - CHANGE_MARGIN_US);
        self.seen.retain(|_, stamp| *stamp >= since);
        self.since = Some(since);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(id: &str, owner: &str, at: Micros) -> Change {
        Change {
            id: id.into(),
            owner_id: owner.into(),
            changed_at: at,
        }
    }

    fn held(lists: &CheckLists<&'static str>, owner: &str, list: &'static str) {
        let reading = lists.begin();
        assert!(lists.keep(owner, reading, list, 1));
    }

    #[test]
    fn a_list_is_held_until_its_owner_is_forgotten() {
        let lists = CheckLists::new(10);
        assert_eq!(lists.get("a"), None);
        held(&lists, "a", "a's");
        held(&lists, "b", "b's");
        assert_eq!(lists.get("a"), Some("a's"));
        lists.forget(["a"]);
        assert_eq!(lists.get("a"), None);
        assert_eq!(lists.get("b"), Some("b's"), "another owner's list stays");
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_kept() {
        let lists = CheckLists::new(10);
        let reading = lists.begin();
        // The owner's write commits while the list is being read...
        lists.forget(["a"]);
        // ...so what the read found may predate it.
        assert!(!lists.keep("a", reading, "stale", 1));
        assert_eq!(lists.get("a"), None);
        // The next read is kept.
        held(&lists, "a", "fresh");
        assert_eq!(lists.get("a"), Some("fresh"));
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity_of_checks() {
        let lists = CheckLists::new(5);
        let r = lists.begin();
        assert!(lists.keep("a", r, "a's", 3));
        assert!(lists.keep("a", r, "a's again", 3), "replacing counts once");
        assert!(lists.keep("b", r, "b's", 2));
        assert_eq!(lists.len(), 2);
        // One more check does not fit: the cache empties, then holds the new list.
        assert!(lists.keep("c", r, "c's", 1));
        assert_eq!((lists.get("a"), lists.get("b")), (None, None));
        assert_eq!(lists.get("c"), Some("c's"));
        assert!(!lists.keep("d", r, "d's", 6), "bigger than the whole cache");
        assert!(!CheckLists::new(0).keep("a", CheckLists::<&str>::new(0).begin(), "x", 0));
    }

    #[test]
    fn the_feed_forgets_each_write_once() {
        let lists = CheckLists::new(10);
        let mut feed = ChangeFeed::new();
        held(&lists, "a", "a's");
        held(&lists, "b", "b's");
        feed.take(0, &[change("c1", "a", 100)], &lists);
        assert_eq!((lists.get("a"), lists.get("b")), (None, Some("b's")));
        // The same write read again (it is still within the margin): a's new list stays.
        held(&lists, "a", "a's, read after the write");
        feed.take(0, &[change("c1", "a", 100)], &lists);
        assert_eq!(lists.get("a"), Some("a's, read after the write"));
        // A later write to the same check is another write.
        feed.take(0, &[change("c1", "a", 101)], &lists);
        assert_eq!(lists.get("a"), None);
    }

    #[test]
    fn the_feed_reads_late_commits_within_the_margin() {
        let lists = CheckLists::new(10);
        let mut feed = ChangeFeed::new();
        let t = 1_000 * CHANGE_MARGIN_US;
        feed.take(t - CHANGE_MARGIN_US, &[change("c1", "a", t)], &lists);
        // The window starts a margin before the latest stamp seen...
        assert_eq!(feed.since, Some(t - CHANGE_MARGIN_US));
        // ...so a write stamped before that one but committed after the look is found
        // at the next.
        held(&lists, "b", "b's");
        let late = change("c2", "b", t - 1);
        feed.take(feed.since.unwrap(), &[late, change("c1", "a", t)], &lists);
        assert_eq!(lists.get("b"), None);
        // What fell out of the window is no longer remembered.
        feed.take(
            feed.since.unwrap(),
            &[change("c3", "c", t + 3 * CHANGE_MARGIN_US)],
            &lists,
        );
        assert_eq!(feed.since, Some(t + 2 * CHANGE_MARGIN_US));
        assert_eq!(feed.seen.keys().collect::<Vec<_>>(), vec!["c3"]);
    }

    #[test]
    fn more_writes_than_one_look_reads_forget_every_list() {
        let lists = CheckLists::new(10);
        let mut feed = ChangeFeed::new();
        held(&lists, "z", "z's");
        let flood: Vec<Change> = (0..CHANGES_PER_LOOK)
            .map(|i| change(&format!("c{i}"), "a", i as Micros))
            .collect();
        feed.take(0, &flood, &lists);
        assert!(
            lists.is_empty(),
            "z's list may be among the writes not read"
        );
    }
}
