//! Enrolled probe agents: enrolment, heartbeats, and which agents are online where.
//!
//! **Architecture Invariant:** an agent's location (country, region, city, ASN) comes
//! from the address the controller sees it connect from, resolved by [`crate::geo`];
//! nothing the agent says about itself is used for it. The handler resolves the
//! address and passes the [`Location`] in; this module only stores it.

use std::collections::HashMap;
use std::net::IpAddr;

use diesel::prelude::*;
use lastmile_protocol::{CheckKind, EnrolRequest, EnrolResponse, Heartbeat, Location};
use uuid::Uuid;

use crate::accounts::{self, hash_secret, new_secret};
use crate::clock::{now_us, Micros};
use crate::error::{Error, Result};
pub use lastmile_storage::agents::Agent;
use lastmile_storage::schema::agents;
use lastmile_storage::DbConn;

/// Enrols a new agent for the volunteer whose key it presents.
pub fn enrol(
    conn: &mut DbConn,
    req: &EnrolRequest,
    ip: IpAddr,
    location: &Location,
) -> Result<EnrolResponse> {
    let Some(volunteer) = accounts::volunteer_by_enrol_key(conn, &req.enrol_key)? else {
        return Err(Error::Unauthorized("unknown enrolment key".into()));
    };
    let name = accounts::validate_name(&req.name)?;
    let token = new_secret("lma_");
    let id = Uuid::new_v4();
    let now = now_us();
    let agent = Agent {
        id: id.to_string(),
        volunteer_id: volunteer.id,
        name,
        token_hash: hash_secret(&token),
        declared_class: req.declared_class.as_str().to_owned(),
        version: truncate(&req.version, 64),
        max_concurrent: 1,
        ip: ip.to_string(),
        country: location.country.clone(),
        region: location.region.clone(),
        city: location.city.clone(),
        asn: location.asn.map(i64::from),
        as_org: location.as_org.clone(),
        enrolled_at: now,
        last_heartbeat_at: None,
        measured_class: None,
        calibrated_at: None,
        rtt_us: None,
        down_bps: None,
        up_bps: None,
        class_mismatch: false,
        calibration_day: 0,
        calibration_bytes: 0,
        paused_reason: None,
        // Until its first heartbeat says otherwise (it is planned into nothing before).
        check_kinds: kinds_column(&[]),
        changed_at: now,
        revoked_at: None,
        path_trace: false,
    };
    diesel::insert_into(agents::table)
        .values(&agent)
        .execute(conn)?;
    Ok(EnrolResponse {
        agent_id: id,
        token,
    })
}

/// The agent holding `token`, if any and not revoked. The server asks
/// [`crate::presence::Presence`] first, which asks this only for agents it does not hold.
pub fn agent_by_token(conn: &mut DbConn, token: &str) -> Result<Option<Agent>> {
    Ok(lastmile_storage::agents::by_token_hash(
        conn,
        &hash_secret(token),
    )?)
}

/// The agent with this id.
pub fn get(conn: &mut DbConn, id: &str) -> Result<Agent> {
    agents::table
        .find(id)
        .select(Agent::as_select())
        .first(conn)
        .optional()?
        .ok_or(Error::NotFound {
            what: "agent",
            code: "agent_not_found",
        })
}

/// The agents with these ids that exist, by id (one query, for a batch of requests).
pub fn get_many(conn: &mut DbConn, ids: &[&str]) -> Result<HashMap<String, Agent>> {
    let mut found = HashMap::new();
    for chunk in ids.chunks(lastmile_storage::agents::BATCH_ROWS) {
        let rows: Vec<Agent> = agents::table
            .filter(agents::id.eq_any(chunk))
            .select(Agent::as_select())
            .load(conn)?;
        found.extend(rows.into_iter().map(|a| (a.id.clone(), a)));
    }
    Ok(found)
}

/// Revokes one of the volunteer's agents (see [`lastmile_storage::agents::revoke`]): its
/// token stops working on every controller within a refresh. Revoking it again changes
/// nothing; an agent that is not the volunteer's is not found.
pub fn revoke(conn: &mut DbConn, volunteer_id: &str, agent_id: &str) -> Result<()> {
    if lastmile_storage::agents::revoke(conn, volunteer_id, agent_id, now_us())? {
        return Ok(());
    }
    match get(conn, agent_id) {
        Ok(agent) if agent.volunteer_id == volunteer_id => Ok(()),
        Ok(_) => Err(Error::NotFound {
            what: "agent",
            code: "agent_not_found",
        }),
        Err(e) => Err(e),
    }
}

/// Whether a heartbeat says anything the agent's row does not hold already (its
/// class, version, limits, address, location, pause, kinds or path tracing). A heartbeat that changes
/// nothing only moves the agent's last-seen time, which [`crate::presence`] keeps in
/// memory and writes in batches.
pub fn beat_changes(agent: &Agent, beat: &Heartbeat, ip: IpAddr, location: &Location) -> bool {
    agent.declared_class != beat.declared_class.as_str()
        || agent.version != truncate(&beat.version, 64)
        || i64::from(agent.max_concurrent) != i64::from(beat.limits.max_concurrent)
        || agent.ip != ip.to_string()
        || agent.country != location.country
        || agent.region != location.region
        || agent.city != location.city
        || agent.asn != location.asn.map(i64::from)
        || agent.as_org != location.as_org
        || agent.paused_reason != beat.paused.as_deref().map(|p| truncate(p, 200))
        || agent.check_kinds != kinds_column(&beat.kinds)
        || agent.path_trace != beat.path_trace
}

/// Refuses limits outside what the controller plans for.
pub fn check_limits(beat: &Heartbeat) -> Result<()> {
    if beat.limits.max_concurrent == 0 || beat.limits.max_concurrent > 64 {
        return Err(Error::invalid(
            "invalid_limits",
            "limits.max_concurrent must be between 1 and 64",
        ));
    }
    Ok(())
}

/// The stored form of the kinds a heartbeat lists: an agent that lists none predates
/// the list and measures `http` only.
fn kinds_column(kinds: &[CheckKind]) -> String {
    if kinds.is_empty() {
        return CheckKind::Http.as_str().to_owned();
    }
    let mut names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names.join(",")
}

/// Writes a heartbeat through: the agent's limits, pause reason, address and location,
/// and the time online since the previous heartbeat when that came within
/// `online_window_us` (a longer gap means the agent was offline in between). The
/// previous heartbeat is `previous` when the caller knows a newer one than the row
/// (a controller holding beats not yet flushed), else the row's. Returns the row as
/// written.
#[allow(clippy::too_many_arguments)]
pub fn heartbeat(
    conn: &mut DbConn,
    agent_id: &str,
    beat: &Heartbeat,
    ip: IpAddr,
    location: &Location,
    online_window_us: Micros,
    previous: Option<Micros>,
    now: Micros,
) -> Result<Agent> {
    check_limits(beat)?;
    let stored: Option<Micros> = agents::table
        .find(agent_id)
        .select(agents::last_heartbeat_at)
        .first(conn)?;
    let previous = previous.max(stored);
    if let Some(gap) = previous
        .map(|p| now - p)
        .filter(|g| *g > 0 && *g <= online_window_us)
    {
        add_uptime(conn, agent_id, now, gap)?;
    }
    diesel::update(agents::table.find(agent_id))
        .set((
            agents::declared_class.eq(beat.declared_class.as_str()),
            agents::version.eq(truncate(&beat.version, 64)),
            agents::max_concurrent.eq(beat.limits.max_concurrent as i32),
            agents::ip.eq(ip.to_string()),
            agents::country.eq(&location.country),
            agents::region.eq(&location.region),
            agents::city.eq(&location.city),
            agents::asn.eq(location.asn.map(i64::from)),
            agents::as_org.eq(&location.as_org),
            agents::last_heartbeat_at.eq(now),
            agents::paused_reason.eq(beat.paused.as_deref().map(|p| truncate(p, 200))),
            agents::check_kinds.eq(kinds_column(&beat.kinds)),
            agents::path_trace.eq(beat.path_trace),
            agents::changed_at.eq(now),
        ))
        .execute(conn)?;
    Ok(agents::table
        .find(agent_id)
        .select(Agent::as_select())
        .first(conn)?)
}

/// Adds `gap` microseconds of time online to the agent's tally for the UTC day of `now`.
fn add_uptime(conn: &mut DbConn, agent_id: &str, now: Micros, gap: Micros) -> Result<()> {
    let seconds = gap / 1_000_000;
    if seconds > 0 {
        let day = now.div_euclid(86_400_000_000);
        lastmile_storage::agents::add_uptime(conn, &[(agent_id.to_owned(), day, seconds)])?;
    }
    Ok(())
}

/// Agents that heartbeat at or after `since` (paused or not).
pub fn online_since(conn: &mut DbConn, since: Micros) -> Result<Vec<Agent>> {
    Ok(agents::table
        .filter(agents::last_heartbeat_at.ge(since))
        .order(agents::id)
        .select(Agent::as_select())
        .load(conn)?)
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// One of a volunteer's agents with what it has done, for the volunteer's own view.
#[derive(Debug, Clone)]
pub struct AgentActivity {
    pub agent: Agent,
    /// When its newest counted result arrived.
    pub last_result_at: Option<Micros>,
    /// Results it delivered that were counted (neither late nor flagged), ever.
    pub results: i64,
}

/// A volunteer's agents, newest first, with their activity.
pub fn of_volunteer(conn: &mut DbConn, volunteer_id: &str) -> Result<Vec<AgentActivity>> {
    use lastmile_storage::schema::agent_work_days;
    let found: Vec<Agent> = agents::table
        .filter(agents::volunteer_id.eq(volunteer_id))
        .order((agents::enrolled_at.desc(), agents::id))
        .select(Agent::as_select())
        .load(conn)?;
    let mut out = Vec::with_capacity(found.len());
    for agent in found {
        // One row per day it worked: summed here, not by SQL (whose SUM of BIGINT is
        // NUMERIC on PostgreSQL).
        let days: Vec<(i64, i64)> = agent_work_days::table
            .filter(agent_work_days::agent_id.eq(&agent.id))
            .select((agent_work_days::results, agent_work_days::last_at))
            .load(conn)?;
        let n = days.iter().map(|d| d.0).sum();
        let last = days.iter().map(|d| d.1).max();
        out.push(AgentActivity {
            agent,
            last_result_at: last,
            results: n,
        });
    }
    Ok(out)
}
