//! The agents a controller serves, held in memory, so that an idle agent costs it almost
//! nothing: no query to check its token, no write for a heartbeat that changes nothing,
//! no query for a lease when there is no work for it.
//!
//! At the agent's cadence (a heartbeat every 30 s, a lease after it and every 5 s
//! between: 0.23 requests a second) a network of 100k agents sends ~23k requests a
//! second, nearly all of them saying "still here, nothing new". Each used to cost a
//! pool checkout and a query to authenticate, and a heartbeat two write transactions:
//! the database, not the agents, set the network's size. Here:
//!
//! - **Tokens**: an agent's row is read once (by its token's hash) and kept. Rows
//!   change rarely (enrolment, a heartbeat with a new class, address, limits or pause, a
//!   calibration, a revocation), and every such change stamps `agents.changed_at`:
//!   [`Presence::refresh`] reads the rows changed since it last looked, every couple of
//!   seconds, one indexed query whatever the number of agents. A revoked agent is thus
//!   refused within one refresh on every controller.
//! - **Heartbeats**: a beat that changes nothing in the row ([`agents::beat_changes`])
//!   and follows one within the online window is remembered: its time, and the time
//!   online since the previous beat, per UTC day. [`Presence::take_pending`] hands them
//!   to [`flush`], which writes them in a few batched statements (the server does so
//!   every few seconds and at shutdown), so the last-seen times selection reads lag by
//!   at most one flush and the uptime the leaderboard pays on is exact to the second
//!   once flushed. Any other beat (a change, or an agent back from offline) is written
//!   through at once, so it is eligible for the next run.
//! - **Idle leases**: a lease that found no pending assignment for the agent marks it
//!   idle; its next leases are answered "nothing" from memory until work may have
//!   appeared for it: a run that planned it, or an assignment re-offered in such a run,
//!   [wakes](Presence::wake_for) it (once per offer) (and answers its waiting long-poll at once), and as a
//!   safety net the mark lapses after [`IDLE_RECHECK_US`].
//!
//! What is held is bounded ([`Presence::new`]'s capacity): past it, agents not seen
//! within the online window go first. One lock guards it all; nothing under it does
//! I/O.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use lastmile_protocol::{Heartbeat, Location};
use lastmile_storage::{write_tx, DbConn};
use tokio::sync::Notify;

use crate::accounts::hash_secret;
use crate::agents::{self, Agent};
use crate::clock::Micros;
use crate::error::Result;

/// How long a lease's "no work for you" stands without a wake-up before the next lease
/// asks the database again (a safety net, not the mechanism: wake-ups are).
pub const IDLE_RECHECK_US: Micros = 120_000_000;

/// How far before the last change seen a refresh reads again, for controllers whose
/// clocks disagree a little.
const CLOCK_MARGIN_US: Micros = 5_000_000;

/// Rows one refresh reads at most per query.
const REFRESH_BATCH: i64 = 10_000;

const DAY_US: Micros = 86_400_000_000;

/// One agent as this controller holds it.
struct Held {
    agent: Arc<Agent>,
    /// The newest heartbeat this controller knows of (its own or the row's).
    last_beat: Option<Micros>,
    /// When a lease last found no work for it, until a wake-up clears it.
    idle_since: Option<Micros>,
    /// Wakes its waiting long-poll lease.
    wake: Arc<Notify>,
    /// A path trace may wait for it: its next lease asks the database for traces. Set
    /// when it is first held (one may have been asked for before) and by
    /// [`Presence::wake_for_traces`]; an agent that does not trace never asks.
    traces_due: bool,
    /// Leases begun for it ([`Presence::begin_lease`]): the newest one's number.
    leases: u64,
}

#[derive(Default)]
struct Inner {
    /// Set when the controller stops: leases no longer wait.
    closing: bool,
    by_token: HashMap<String, String>,
    held: HashMap<String, Held>,
    pending: Pending,
    /// Changes at or after this were not read yet.
    watermark: Micros,
    /// Offers of work already woken for, (agent, assignment time), so that the two
    /// ways of learning of one (the runs this replica created, the work feed) wake an
    /// agent once.
    offers_woken: HashSet<(String, Micros)>,
    /// The same for path traces ([`crate::path_traces::offers`]).
    traces_woken: HashSet<(String, Micros)>,
}

/// Heartbeats remembered and not yet written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Agent → its newest heartbeat time.
    pub beats: HashMap<String, Micros>,
    /// (agent, UTC day) → microseconds online.
    pub uptime: HashMap<(String, i64), Micros>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.beats.is_empty() && self.uptime.is_empty()
    }

    fn merge(&mut self, other: Pending) {
        for (id, at) in other.beats {
            let e = self.beats.entry(id).or_insert(at);
            *e = (*e).max(at);
        }
        for (key, us) in other.uptime {
            *self.uptime.entry(key).or_insert(0) += us;
        }
    }
}

/// What to do with a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Remembered; nothing to write now.
    Remembered,
    /// Write it through with [`agents::heartbeat`], `previous` being the newest beat
    /// this controller knew (so the time online is not counted twice), then call
    /// [`Presence::hold`] with the row as written.
    WriteThrough { previous: Option<Micros> },
}

/// The agents this controller serves; see the module doc.
pub struct Presence {
    inner: Mutex<Inner>,
    online_window_us: Micros,
    capacity: usize,
}

impl Presence {
    /// Holds at most `capacity` agents; `online_window_us` is the scheduling policy's
    /// (a beat after a longer gap means the agent was offline in between).
    pub fn new(online_window_us: Micros, capacity: usize, now: Micros) -> Presence {
        Presence {
            inner: Mutex::new(Inner {
                watermark: now,
                ..Inner::default()
            }),
            online_window_us,
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing under the lock can leave it half-changed in a way that matters more
        // than a lost heartbeat: keep serving after a panic elsewhere.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The agent holding `token`, if this controller holds it (no query).
    pub fn agent_by_token(&self, token: &str) -> Option<Arc<Agent>> {
        let hash = hash_secret(token);
        let inner = self.lock();
        let id = inner.by_token.get(&hash)?;
        inner.held.get(id).map(|h| h.agent.clone())
    }

    /// Holds `agent` as read from (or just written to) the database; returns it shared.
    pub fn hold(&self, agent: Agent) -> Arc<Agent> {
        let agent = Arc::new(agent);
        let mut inner = self.lock();
        if !inner.held.contains_key(&agent.id) && inner.held.len() >= self.capacity {
            self.evict_one(&mut inner, agent.last_heartbeat_at.unwrap_or(0));
        }
        inner
            .by_token
            .insert(agent.token_hash.clone(), agent.id.clone());
        match inner.held.get_mut(&agent.id) {
            Some(held) => {
                held.last_beat = held.last_beat.max(agent.last_heartbeat_at);
                // Two requests of one agent can finish out of order (a heartbeat's write
                // read before a calibration committed): the newer change stays.
                if agent.changed_at >= held.agent.changed_at {
                    held.agent = agent.clone();
                } else {
                    return held.agent.clone();
                }
            }
            None => {
                inner.held.insert(
                    agent.id.clone(),
                    Held {
                        agent: agent.clone(),
                        last_beat: agent.last_heartbeat_at,
                        idle_since: None,
                        wake: Arc::new(Notify::new()),
                        traces_due: agent.path_trace,
                        leases: 0,
                    },
                );
            }
        }
        agent
    }

    /// Makes room: an agent not seen within the online window if there is one, else
    /// the one seen longest ago.
    fn evict_one(&self, inner: &mut Inner, now: Micros) {
        let offline = inner
            .held
            .iter()
            .find(|(_, h)| h.last_beat.is_none_or(|b| b < now - self.online_window_us))
            .map(|(id, _)| id.clone());
        let victim = offline.or_else(|| {
            inner
                .held
                .iter()
                .min_by_key(|(_, h)| h.last_beat)
                .map(|(id, _)| id.clone())
        });
        if let Some(id) = victim {
            forget(inner, &id);
        }
    }

    /// Agents held now.
    pub fn len(&self) -> usize {
        self.lock().held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides about a heartbeat of `agent` (as [`Presence::agent_by_token`] gave it)
    /// at `now`; see [`Beat`]. Refuses limits out of range, like the write-through.
    pub fn beat(
        &self,
        agent: &Agent,
        beat: &Heartbeat,
        ip: IpAddr,
        location: &Location,
        now: Micros,
    ) -> Result<Beat> {
        agents::check_limits(beat)?;
        let mut inner = self.lock();
        let Some(held) = inner.held.get_mut(&agent.id) else {
            return Ok(Beat::WriteThrough { previous: None });
        };
        let previous = held.last_beat;
        let back_from_offline = previous.is_none_or(|p| now - p > self.online_window_us);
        if back_from_offline || agents::beat_changes(&held.agent, beat, ip, location) {
            return Ok(Beat::WriteThrough { previous });
        }
        held.last_beat = Some(now.max(previous.unwrap_or(now)));
        let gap = previous.map_or(0, |p| now - p);
        let pending = &mut inner.pending;
        let at = pending.beats.entry(agent.id.clone()).or_insert(now);
        *at = (*at).max(now);
        if gap > 0 {
            *pending
                .uptime
                .entry((agent.id.clone(), now.div_euclid(DAY_US)))
                .or_insert(0) += gap;
        }
        Ok(Beat::Remembered)
    }

    /// Takes what is to be written: every remembered beat, and each (agent, day)'s
    /// whole seconds online (the fraction stays for the next flush).
    pub fn take_pending(&self) -> Pending {
        let mut inner = self.lock();
        let beats = std::mem::take(&mut inner.pending.beats);
        let mut uptime = HashMap::new();
        inner.pending.uptime.retain(|key, us| {
            let whole = *us / 1_000_000 * 1_000_000;
            if whole > 0 {
                uptime.insert(key.clone(), whole);
                *us -= whole;
            }
            *us > 0
        });
        Pending { beats, uptime }
    }

    /// Puts back what a failed flush did not write.
    pub fn restore(&self, pending: Pending) {
        self.lock().pending.merge(pending);
    }

    /// Reads the agent rows changed since the last refresh and updates (or, revoked,
    /// drops) the agents held. Returns how many held agents changed.
    pub fn refresh(&self, conn: &mut DbConn) -> Result<usize> {
        let mut since = self.lock().watermark - CLOCK_MARGIN_US;
        let mut updated = 0;
        loop {
            let read_from = since;
            let rows = lastmile_storage::agents::changed_since(conn, since, REFRESH_BATCH)?;
            let full = rows.len() as i64 == REFRESH_BATCH;
            let mut inner = self.lock();
            for row in rows {
                since = since.max(row.changed_at);
                inner.watermark = inner.watermark.max(row.changed_at);
                if !inner.held.contains_key(&row.id) {
                    continue;
                }
                updated += 1;
                if row.revoked_at.is_some() {
                    forget(&mut inner, &row.id);
                } else if let Some(held) = inner.held.get_mut(&row.id) {
                    held.last_beat = held.last_beat.max(row.last_heartbeat_at);
                    held.agent = Arc::new(row);
                }
            }
            // Let go before the next query (the lock was held into the next round's
            // `self.lock()` here once, and hung every request of the replica: the
            // lock is not reentrant).
            drop(inner);
            if !full {
                return Ok(updated);
            }
            // A full batch: the rest changed at `since` or later, and reading again from
            // `since` re-reads the rows sharing the last time, which is safe. A batch
            // that all changed at the time it was read from would be read forever: then
            // move on by one microsecond.
            if since == read_from {
                since += 1;
            }
        }
    }

    /// Whether a lease for this agent can be answered "nothing" without asking the
    /// database: a lease found none since the last wake-up, less than
    /// [`IDLE_RECHECK_US`] ago.
    pub fn is_idle(&self, agent_id: &str, now: Micros) -> bool {
        self.lock()
            .held
            .get(agent_id)
            .and_then(|h| h.idle_since)
            .is_some_and(|since| now - since < IDLE_RECHECK_US)
    }

    /// Records what a lease that asked the database found: `idle` when it wanted work
    /// and found less than it could take.
    pub fn leased(&self, agent_id: &str, idle: bool, now: Micros) {
        if let Some(held) = self.lock().held.get_mut(agent_id) {
            held.idle_since = idle.then_some(now);
        }
    }

    /// The controller is stopping: every waiting lease is woken, and none waits again.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closing = true;
        for held in inner.held.values() {
            held.wake.notify_waiters();
        }
    }

    /// A lease from this agent begins and is its newest: an older one still waiting is
    /// woken, and stops waiting ([`Presence::is_newest_lease`]). An agent leases one
    /// request at a time, so an older lease still waiting is one its agent abandoned
    /// (stopped, restarted, lost its line: actix does not tell a handler that its
    /// client has gone), which would otherwise take work the agent never sees. Returns
    /// the lease's number; `None` when the agent is not held.
    pub fn begin_lease(&self, agent_id: &str) -> Option<u64> {
        let mut inner = self.lock();
        let held = inner.held.get_mut(agent_id)?;
        held.leases += 1;
        held.wake.notify_waiters();
        Some(held.leases)
    }

    /// Whether no lease of this agent began after lease number `lease`.
    pub fn is_newest_lease(&self, agent_id: &str, lease: u64) -> bool {
        self.lock()
            .held
            .get(agent_id)
            .is_none_or(|h| h.leases == lease)
    }

    /// What wakes this agent's waiting lease; `None` when it is not held or the
    /// controller is stopping (the lease answers at once).
    pub fn waker(&self, agent_id: &str) -> Option<Arc<Notify>> {
        let inner = self.lock();
        if inner.closing {
            return None;
        }
        inner.held.get(agent_id).map(|h| h.wake.clone())
    }

    /// Work was offered to these agents ([`crate::scheduling::offers`]): each one
    /// held and not yet woken for that offer asks the database with its next lease, and
    /// a lease waiting now returns to do so.
    pub fn wake_for(&self, offers: Vec<(String, Micros)>) {
        let mut inner = self.lock();
        for offer in offers {
            if inner.offers_woken.contains(&offer) {
                continue;
            }
            if let Some(held) = inner.held.get_mut(&offer.0) {
                held.idle_since = None;
                held.wake.notify_waiters();
            }
            inner.offers_woken.insert(offer);
        }
    }

    /// Path traces were asked of these agents: each one held and not yet woken for
    /// that trace asks the database for traces with its next lease, and a lease
    /// waiting now returns to do so.
    pub fn wake_for_traces(&self, offers: Vec<(String, Micros)>) {
        let mut inner = self.lock();
        for offer in offers {
            if inner.traces_woken.contains(&offer) {
                continue;
            }
            if let Some(held) = inner.held.get_mut(&offer.0) {
                held.traces_due = true;
                held.wake.notify_waiters();
            }
            inner.traces_woken.insert(offer);
        }
    }

    /// Whether a path trace may wait for this agent; the answer is given once (the
    /// lease that asked looks), until [`Presence::wake_for_traces`] or
    /// [`Presence::traces_still_due`] sets it again.
    pub fn take_traces_due(&self, agent_id: &str) -> bool {
        self.lock()
            .held
            .get_mut(agent_id)
            .is_some_and(|h| std::mem::take(&mut h.traces_due))
    }

    /// A lease that took [`Presence::take_traces_due`] could not look: look next time.
    pub fn traces_still_due(&self, agent_id: &str) {
        if let Some(held) = self.lock().held.get_mut(agent_id) {
            held.traces_due = true;
        }
    }

    /// Forgets the offers made before `since` (the work feed no longer reads them).
    pub fn forget_offers_before(&self, since: Micros) {
        let mut inner = self.lock();
        inner.offers_woken.retain(|(_, at)| *at >= since);
        inner.traces_woken.retain(|(_, at)| *at >= since);
    }
}

fn forget(inner: &mut Inner, agent_id: &str) {
    if let Some(held) = inner.held.remove(agent_id) {
        inner.by_token.remove(&held.agent.token_hash);
        // A lease waiting for it returns (and its next request is refused).
        held.wake.notify_waiters();
    }
}

/// Writes remembered heartbeats: last-seen times moved forward, time online added,
/// in one transaction of a few batched statements.
pub fn flush(conn: &mut DbConn, pending: &Pending) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let beats: Vec<(String, Micros)> = pending
        .beats
        .iter()
        .map(|(id, at)| (id.clone(), *at))
        .collect();
    let uptime: Vec<(String, i64, i64)> = pending
        .uptime
        .iter()
        .map(|((id, day), us)| (id.clone(), *day, us / 1_000_000))
        .filter(|(_, _, s)| *s > 0)
        .collect();
    write_tx(conn, |c| {
        lastmile_storage::agents::record_beats(c, &beats)?;
        lastmile_storage::agents::add_uptime(c, &uptime)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lastmile_protocol::{AgentLimits, CheckKind, ConnectionClass};

    fn agent(id: &str, last_beat: Option<Micros>) -> Agent {
        Agent {
            id: id.into(),
            volunteer_id: "v".into(),
            name: id.into(),
            token_hash: hash_secret(&format!("token-{id}")),
            declared_class: "cable".into(),
            version: "1".into(),
            max_concurrent: 2,
            ip: "192.0.2.1".into(),
            country: None,
            region: None,
            city: None,
            asn: None,
            as_org: None,
            enrolled_at: 0,
            last_heartbeat_at: last_beat,
            measured_class: None,
            calibrated_at: None,
            rtt_us: None,
            down_bps: None,
            up_bps: None,
            class_mismatch: false,
            calibration_day: 0,
            calibration_bytes: 0,
            paused_reason: None,
            check_kinds: "http,page".into(),
            path_trace: false,
            changed_at: 0,
            revoked_at: None,
        }
    }

    fn same_beat() -> Heartbeat {
        Heartbeat {
            declared_class: ConnectionClass::Cable,
            version: "1".into(),
            limits: AgentLimits { max_concurrent: 2 },
            paused: None,
            kinds: vec![CheckKind::Http, CheckKind::Page],
            path_trace: false,
        }
    }

    const WINDOW: Micros = 90_000_000;
    const S: Micros = 1_000_000;

    fn ip() -> IpAddr {
        "192.0.2.1".parse().unwrap()
    }

    #[test]
    fn a_beat_that_changes_nothing_is_remembered_with_its_time_online() {
        let p = Presence::new(WINDOW, 10, 0);
        let a = p.hold(agent("a", Some(100 * S)));
        let loc = Location::default();
        assert_eq!(
            p.beat(&a, &same_beat(), ip(), &loc, 130 * S).unwrap(),
            Beat::Remembered
        );
        assert_eq!(
            p.beat(&a, &same_beat(), ip(), &loc, 160 * S).unwrap(),
            Beat::Remembered
        );
        let pending = p.take_pending();
        assert_eq!(pending.beats["a"], 160 * S);
        assert_eq!(pending.uptime[&("a".to_owned(), 0)], 60 * S);
        assert!(p.take_pending().is_empty(), "taken once");
    }

    #[test]
    fn a_changed_beat_or_one_after_a_gap_is_written_through() {
        let p = Presence::new(WINDOW, 10, 0);
        let a = p.hold(agent("a", Some(100 * S)));
        let loc = Location::default();
        let mut paused = same_beat();
        paused.paused = Some("daily limit".into());
        assert_eq!(
            p.beat(&a, &paused, ip(), &loc, 130 * S).unwrap(),
            Beat::WriteThrough {
                previous: Some(100 * S)
            }
        );
        assert_eq!(
            p.beat(
                &a,
                &same_beat(),
                "192.0.2.9".parse().unwrap(),
                &loc,
                130 * S
            )
            .unwrap(),
            Beat::WriteThrough {
                previous: Some(100 * S)
            },
            "a new address"
        );
        assert_eq!(
            p.beat(&a, &same_beat(), ip(), &loc, 100 * S + WINDOW + 1)
                .unwrap(),
            Beat::WriteThrough {
                previous: Some(100 * S)
            },
            "back from offline"
        );
        let fresh = p.hold(agent("b", None));
        assert_eq!(
            p.beat(&fresh, &same_beat(), ip(), &loc, 5 * S).unwrap(),
            Beat::WriteThrough { previous: None },
            "a first beat"
        );
    }

    #[test]
    fn fractions_of_a_second_online_wait_for_the_next_flush_and_failed_flushes_are_kept() {
        let p = Presence::new(WINDOW, 10, 0);
        let a = p.hold(agent("a", Some(0)));
        let loc = Location::default();
        p.beat(&a, &same_beat(), ip(), &loc, 1_500_000).unwrap();
        let first = p.take_pending();
        assert_eq!(first.uptime[&("a".to_owned(), 0)], S);
        p.restore(first);
        p.beat(&a, &same_beat(), ip(), &loc, 3_000_000).unwrap();
        let second = p.take_pending();
        assert_eq!(
            second.uptime[&("a".to_owned(), 0)],
            3 * S,
            "nothing lost or doubled"
        );
        assert_eq!(second.beats["a"], 3_000_000);
    }

    #[test]
    fn an_idle_agent_stays_idle_until_woken_or_the_recheck() {
        let p = Presence::new(WINDOW, 10, 0);
        p.hold(agent("a", Some(0)));
        assert!(!p.is_idle("a", 0));
        p.leased("a", true, S);
        assert!(p.is_idle("a", 2 * S));
        assert!(
            !p.is_idle("a", S + IDLE_RECHECK_US),
            "the safety net lapses"
        );
        p.wake_for(vec![("a".into(), 10)]);
        assert!(!p.is_idle("a", 2 * S));
        p.leased("a", true, 3 * S);
        p.wake_for(vec![("a".into(), 10)]);
        assert!(p.is_idle("a", 4 * S), "woken once per offer");
    }

    #[test]
    fn capacity_is_kept_by_dropping_agents_not_seen_recently_first() {
        let p = Presence::new(WINDOW, 2, 0);
        p.hold(agent("old", Some(0)));
        p.hold(agent("recent", Some(1000 * S)));
        p.hold(agent("new", Some(1001 * S)));
        assert_eq!(p.len(), 2);
        assert!(p.agent_by_token("token-old").is_none());
        assert!(p.agent_by_token("token-recent").is_some());
        assert!(p.agent_by_token("token-new").is_some());
    }
}
