//! Which agents measure a run: chosen when the run is created, spread over the groups of
//! agents that match the check's selection and rotated over the check's runs.
//!
//! An agent is **eligible** for a run of a check when it heartbeat within the online
//! window, is not revoked, has been calibrated (an agent whose line the controller never
//! measured cannot be judged by `verification`'s line rules), is not paused by its
//! volunteer's limits, can measure the check's kind, and matches the selection.
//!
//! The choice, for `n` slots:
//!
//! 1. A [`Census`] counts the eligible agents per **group** (country, network,
//!    connection class) and the kinds they measure: one grouped query a scheduler pass,
//!    shared by every run the pass creates, whatever their checks. The selection's
//!    filters and the check's kind are applied to the groups (few rows), not to agents;
//!    `check_groups` gives when this check last took an agent from each group.
//! 2. [`shares`] shares the slots out over the countries, each country's share over its
//!    networks, each network's over its classes: in proportion to their agents or equally
//!    ([`Spread`]). Where the arithmetic leaves a tie, the group this check took an agent
//!    from least recently (never before anyone) wins, then chance: over runs, the slots
//!    go round.
//! 3. One query per group that got a share takes that many of its agents, least recently
//!    used by this check first (never used before anyone), ties at random. A group that
//!    has fewer than its count (the census is of the pass's start, and a run's own agents
//!    are not chosen twice) gives what it has, and the slots left are shared again over
//!    the groups that still have agents.
//!
//! `check_agents` remembers when each agent last measured each check and `check_groups`
//! when each check last took an agent from each group (written for the chosen agents
//! and their groups only). The same choice for one slot re-offers an assignment whose
//! lease ran out, or which its planned agent never came for, to the best agent not yet
//! in the run, from the same group as the one that failed when it has one left.
//!
//! Cost: the census reads every online eligible agent once per scheduler pass (an index
//! range on `last_heartbeat_at`), not once per run; a run reads its check's group
//! memory (at most one row per group) and the chosen groups' agents (an index on the
//! group); nothing loads agents into the controller's memory, and a run writes rows for
//! its chosen agents and their groups only.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use lastmile_protocol::{CheckKind, ConnectionClass};
use rand::Rng;

use crate::agents::Agent;
use crate::check_terms::{Selection, Spread};
use crate::clock::Micros;
use crate::error::Result;
use lastmile_storage::schema::agents;
use lastmile_storage::DbConn;

/// Where a choice looks.
#[derive(Debug, Clone, Copy)]
pub struct Pool<'a> {
    /// The check whose runs rotate over agents (`""`: none, e.g. when counting for a
    /// check not created yet).
    pub check_id: &'a str,
    pub selection: &'a Selection,
    pub kind: CheckKind,
    /// Online: heartbeat at or after this.
    pub since: Micros,
    /// Agents already planned into this run are not chosen again.
    pub run_id: Option<&'a str>,
}

/// Eligible agents of one country, network and class.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct Group {
    /// ISO code; empty when the agent's address has no known country.
    #[diesel(sql_type = Text)]
    pub country: String,
    /// AS number; -1 when unknown.
    #[diesel(sql_type = BigInt)]
    pub asn: i64,
    /// Measured class, or the declared one before calibration measured it.
    #[diesel(sql_type = Text)]
    pub class: String,
    #[diesel(sql_type = BigInt)]
    pub agents: i64,
    /// When this check last took an agent from the group; -1: never.
    #[diesel(sql_type = BigInt)]
    pub oldest_use: i64,
}

impl Group {
    /// Whether the group's agents pass the selection's filters.
    fn matches(&self, s: &Selection) -> bool {
        let country_ok = s.countries.is_empty()
            || s.countries
                .iter()
                .any(|c| c.eq_ignore_ascii_case(&self.country));
        let asn_ok = s.asns.is_empty() || s.asns.iter().any(|&a| i64::from(a) == self.asn);
        let class_ok = s.connection_classes.is_empty()
            || self
                .class
                .parse::<ConnectionClass>()
                .is_ok_and(|c| s.connection_classes.contains(&c));
        country_ok && asn_ok && class_ok
    }
}

/// A run's chosen agents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Choice {
    /// Agents that were eligible.
    pub eligible: u64,
    /// The chosen ones, at most the slots asked for.
    pub agents: Vec<String>,
    /// The group each chosen agent was taken from, index for index.
    pub groups: Vec<GroupKey>,
}

/// A group's (country, network, class).
pub type GroupKey = (String, i64, String);

impl Group {
    fn key(&self) -> GroupKey {
        (self.country.clone(), self.asn, self.class.clone())
    }
}

/// The eligible agents' table, joined with their last use by the pool's check, left
/// without the pool's run's agents. Parameters: `$1` check, `$2` online since, `$3` the
/// kind as a `LIKE` pattern over the comma-separated kinds, `$4` run (`""`: none).
/// SQLite numbers `$n` parameters by first appearance, so they appear in order.
const ELIGIBLE: &str = "FROM agents a \
     LEFT JOIN check_agents u ON u.check_id = $1 AND u.agent_id = a.id \
     WHERE a.last_heartbeat_at >= $2 AND a.revoked_at IS NULL \
       AND a.calibrated_at IS NOT NULL AND a.paused_reason IS NULL \
       AND (',' || a.check_kinds || ',') LIKE $3 \
       AND NOT EXISTS (SELECT 1 FROM run_agents ra WHERE ra.run_id = $4 AND ra.agent_id = a.id)";

const COUNTRY: &str = "COALESCE(a.country, '')";
const ASN: &str = "COALESCE(a.asn, -1)";
const CLASS: &str = "COALESCE(a.measured_class, a.declared_class)";

/// The rotation: a group's agents least recently used by the pool's check first (never
/// used first of all), ties at random.
const LEAST_RECENTLY_USED: &str = "COALESCE(u.last_run_at, -1), random()";

/// The network's eligible agents (online since a time, not revoked, calibrated, not
/// paused) counted per group and the kinds they measure: read once and used for every
/// run a scheduler pass creates, so the cost of reading every online agent is paid per
/// pass, not per run.
#[derive(Debug, Clone, Default)]
pub struct Census {
    rows: Vec<CensusRow>,
}

/// A group's columns as the census and `check_groups` name them.
#[derive(Debug, Clone, QueryableByName)]
struct GroupColumns {
    #[diesel(sql_type = Text)]
    country: String,
    #[diesel(sql_type = BigInt)]
    asn: i64,
    #[diesel(sql_type = Text)]
    class: String,
}

impl GroupColumns {
    fn key(&self) -> GroupKey {
        (self.country.clone(), self.asn, self.class.clone())
    }
}

#[derive(Debug, Clone, QueryableByName)]
struct CensusRow {
    #[diesel(embed)]
    group: GroupColumns,
    /// The kinds the agents measure, comma-separated as agents report them.
    #[diesel(sql_type = Text)]
    kinds: String,
    #[diesel(sql_type = BigInt)]
    agents: i64,
}

impl Census {
    /// Counts the agents that heartbeat at or after `since`.
    pub fn take(conn: &mut DbConn, since: Micros) -> Result<Census> {
        let rows: Vec<CensusRow> = diesel::sql_query(format!(
            "SELECT {COUNTRY} AS country, {ASN} AS asn, {CLASS} AS class, \
                    a.check_kinds AS kinds, COUNT(*) AS agents \
             FROM agents a \
             WHERE a.last_heartbeat_at >= $1 AND a.revoked_at IS NULL \
               AND a.calibrated_at IS NOT NULL AND a.paused_reason IS NULL \
             GROUP BY {COUNTRY}, {ASN}, {CLASS}, a.check_kinds"
        ))
        .bind::<BigInt, _>(since)
        .load(conn)?;
        Ok(Census { rows })
    }

    /// The groups of agents that measure `kind` and pass `selection`'s filters, in
    /// group order, each used by no check yet (`oldest_use` -1).
    fn groups(&self, selection: &Selection, kind: CheckKind) -> Vec<Group> {
        let mut counted: BTreeMap<GroupKey, i64> = BTreeMap::new();
        for row in &self.rows {
            if row.kinds.split(',').any(|k| k == kind.as_str()) {
                *counted.entry(row.group.key()).or_default() += row.agents;
            }
        }
        counted
            .into_iter()
            .map(|((country, asn, class), agents)| Group {
                country,
                asn,
                class,
                agents,
                oldest_use: -1,
            })
            .filter(|g| g.matches(selection))
            .collect()
    }

    /// How many agents the pool has.
    pub fn count(&self, pool: &Pool) -> u64 {
        self.groups(pool.selection, pool.kind)
            .iter()
            .map(|g| g.agents.max(0) as u64)
            .sum()
    }
}

/// The pool's groups with when its check last took an agent from each.
fn eligible_groups(conn: &mut DbConn, census: &Census, pool: &Pool) -> Result<Vec<Group>> {
    let mut groups = census.groups(pool.selection, pool.kind);
    if pool.check_id.is_empty() || groups.is_empty() {
        return Ok(groups);
    }
    #[derive(QueryableByName)]
    struct Used {
        #[diesel(embed)]
        group: GroupColumns,
        #[diesel(sql_type = BigInt)]
        last_used_at: i64,
    }
    let used: Vec<Used> = diesel::sql_query(
        "SELECT country, asn, class, last_used_at FROM check_groups WHERE check_id = $1",
    )
    .bind::<Text, _>(pool.check_id)
    .load(conn)?;
    let used: BTreeMap<GroupKey, i64> = used
        .into_iter()
        .map(|u| (u.group.key(), u.last_used_at))
        .collect();
    for g in &mut groups {
        g.oldest_use = used.get(&g.key()).copied().unwrap_or(-1);
    }
    Ok(groups)
}

fn kind_pattern(kind: CheckKind) -> String {
    format!("%,{},%", kind.as_str())
}

/// Rounds of sharing: a round after the first happens only when a group had fewer
/// agents than its count, and each such group drops out; four rounds leave a slot
/// empty only when groups keep running dry one after the other.
const ROUNDS: usize = 4;

/// Chooses up to `n` agents of the pool, spread and rotated (see the module's text).
pub fn choose(conn: &mut DbConn, census: &Census, pool: &Pool, n: u64) -> Result<Choice> {
    let mut groups = eligible_groups(conn, census, pool)?;
    let eligible = groups.iter().map(|g| g.agents.max(0) as u64).sum();
    let mut choice = Choice {
        eligible,
        ..Choice::default()
    };
    // What each group has given so far.
    let mut given = vec![0u64; groups.len()];
    for _ in 0..ROUNDS {
        let left = n.saturating_sub(choice.agents.len() as u64);
        if left == 0 {
            break;
        }
        let open: Vec<Group> = groups
            .iter()
            .zip(&given)
            .map(|(g, &given)| Group {
                agents: (g.agents.max(0) as u64).saturating_sub(given) as i64,
                ..g.clone()
            })
            .collect();
        let shares = shares(&open, left, pool.selection.spread, &mut rand::thread_rng());
        // Each group's best agents again, past the ones it already gave.
        let wanted: Vec<(&Group, u64)> = groups
            .iter()
            .zip(&given)
            .zip(&shares)
            .filter(|(_, &share)| share > 0)
            .map(|((g, &given), &share)| (g, given + share))
            .collect();
        let mut picked = pick_groups(conn, pool, &wanted)?;
        let mut ran_dry = false;
        for (i, share) in shares.into_iter().enumerate() {
            if share == 0 {
                continue;
            }
            let picked = picked.remove(&groups[i].key()).unwrap_or_default();
            let new: Vec<String> = picked
                .into_iter()
                .filter(|a| !choice.agents.contains(a))
                .take(share as usize)
                .collect();
            if (new.len() as u64) < share {
                // Fewer than counted: it gives no more.
                groups[i].agents = (given[i] + new.len() as u64) as i64;
                ran_dry = true;
            }
            given[i] += new.len() as u64;
            for agent in new {
                choice.agents.push(agent);
                choice.groups.push(groups[i].key());
            }
        }
        if !ran_dry {
            break;
        }
    }
    Ok(choice)
}

/// The best agent of the pool for one more slot: from `like`'s group (the agent that
/// failed the slot) while it has eligible agents left, else as a choice of one.
pub fn replacement(
    conn: &mut DbConn,
    census: &Census,
    pool: &Pool,
    like: Option<&str>,
) -> Result<Choice> {
    if let Some(like) = like {
        let failed: Option<Agent> = agents::table
            .find(like)
            .select(Agent::as_select())
            .first(conn)
            .optional()?;
        if let Some(failed) = failed {
            let group = Group {
                country: failed.country.unwrap_or_default(),
                asn: failed.asn.unwrap_or(-1),
                class: failed.measured_class.unwrap_or(failed.declared_class),
                agents: 1,
                oldest_use: -1,
            };
            if group.matches(pool.selection) {
                if let Some(agent) = pick(conn, pool, &group, 1)?.into_iter().next() {
                    return Ok(Choice {
                        eligible: 0,
                        agents: vec![agent],
                        groups: vec![group.key()],
                    });
                }
            }
        }
    }
    choose(conn, census, pool, 1)
}

/// Up to `n` eligible agents of each group, least recently used by the pool's check
/// first, by group. On PostgreSQL one statement for all the groups: a statement a group
/// was planned each time (0.15 ms, as much as it ran), and a run spread over 200
/// groups sent 200 of them. SQLite, in process, picks group by group.
fn pick_groups(
    conn: &mut DbConn,
    pool: &Pool,
    wanted: &[(&Group, u64)],
) -> Result<HashMap<GroupKey, Vec<String>>> {
    let DbConn::Pg(c) = conn else {
        let mut picked = HashMap::with_capacity(wanted.len());
        for (group, n) in wanted {
            picked.insert(group.key(), pick(conn, pool, group, *n)?);
        }
        return Ok(picked);
    };
    #[derive(QueryableByName)]
    struct Picked {
        #[diesel(sql_type = Text)]
        id: String,
        #[diesel(embed)]
        group: GroupColumns,
    }
    use diesel::sql_types::Array;
    let countries: Vec<&str> = wanted.iter().map(|(g, _)| g.country.as_str()).collect();
    let asns: Vec<i64> = wanted.iter().map(|(g, _)| g.asn).collect();
    let classes: Vec<&str> = wanted.iter().map(|(g, _)| g.class.as_str()).collect();
    let counts: Vec<i64> = wanted
        .iter()
        .map(|(_, n)| i64::try_from(*n).unwrap_or(i64::MAX))
        .collect();
    // Ranked within each wanted group, in the order `pick` takes one group's agents.
    let rows: Vec<Picked> = diesel::sql_query(format!(
        "WITH wanted AS ( \
             SELECT * FROM unnest($5::text[], $6::bigint[], $7::text[], $8::bigint[]) \
                 AS w (country, asn, class, n)) \
         SELECT ranked.id, ranked.country, ranked.asn, ranked.class FROM ( \
             SELECT a.id AS id, {COUNTRY} AS country, {ASN} AS asn, {CLASS} AS class, \
                 row_number() OVER (PARTITION BY {COUNTRY}, {ASN}, {CLASS} \
                     ORDER BY {LEAST_RECENTLY_USED}) AS rank \
             {ELIGIBLE} \
               AND ({COUNTRY}, {ASN}, {CLASS}) IN (SELECT country, asn, class FROM wanted)) ranked \
         JOIN wanted w ON w.country = ranked.country AND w.asn = ranked.asn \
             AND w.class = ranked.class \
         WHERE ranked.rank <= w.n \
         ORDER BY ranked.country, ranked.asn, ranked.class, ranked.rank"
    ))
    .bind::<Text, _>(pool.check_id)
    .bind::<BigInt, _>(pool.since)
    .bind::<Text, _>(kind_pattern(pool.kind))
    .bind::<Text, _>(pool.run_id.unwrap_or(""))
    .bind::<Array<Text>, _>(&countries)
    .bind::<Array<BigInt>, _>(&asns)
    .bind::<Array<Text>, _>(&classes)
    .bind::<Array<BigInt>, _>(&counts)
    .load(c)?;
    let mut picked: HashMap<GroupKey, Vec<String>> = HashMap::with_capacity(wanted.len());
    for row in rows {
        picked.entry(row.group.key()).or_default().push(row.id);
    }
    Ok(picked)
}

/// Up to `n` eligible agents of `group`, least recently used by the pool's check first.
fn pick(conn: &mut DbConn, pool: &Pool, group: &Group, n: u64) -> Result<Vec<String>> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = Text)]
        id: String,
    }
    let picked: Vec<Id> = diesel::sql_query(format!(
        "SELECT a.id AS id {ELIGIBLE} \
           AND {COUNTRY} = $5 AND {ASN} = $6 AND {CLASS} = $7 \
         ORDER BY {LEAST_RECENTLY_USED} LIMIT $8"
    ))
    .bind::<Text, _>(pool.check_id)
    .bind::<BigInt, _>(pool.since)
    .bind::<Text, _>(kind_pattern(pool.kind))
    .bind::<Text, _>(pool.run_id.unwrap_or(""))
    .bind::<Text, _>(&group.country)
    .bind::<BigInt, _>(group.asn)
    .bind::<Text, _>(&group.class)
    .bind::<BigInt, _>(i64::try_from(n).unwrap_or(i64::MAX))
    .load(conn)?;
    Ok(picked.into_iter().map(|r| r.id).collect())
}

/// Records that the chosen agents measure a run of `check_id` created `at`, and that
/// the check took agents from their groups then: the rotation's memory.
pub fn record_use(conn: &mut DbConn, check_id: &str, chosen: &Choice, at: Micros) -> Result<()> {
    let mut groups: Vec<&GroupKey> = chosen.groups.iter().collect();
    groups.sort_unstable();
    groups.dedup();
    if let DbConn::Pg(c) = conn {
        // A statement each for all the run's agents and groups (one per agent and group
        // was a round trip each: 200 agents, 400 statements a run).
        use diesel::sql_types::Array;
        diesel::sql_query(
            "INSERT INTO check_agents (check_id, agent_id, last_run_at) \
             SELECT $1, a, $3 FROM unnest($2::text[]) AS a \
             ON CONFLICT (check_id, agent_id) DO UPDATE SET last_run_at = excluded.last_run_at",
        )
        .bind::<Text, _>(check_id)
        .bind::<Array<Text>, _>(&chosen.agents)
        .bind::<BigInt, _>(at)
        .execute(c)?;
        let countries: Vec<&str> = groups.iter().map(|g| g.0.as_str()).collect();
        let asns: Vec<i64> = groups.iter().map(|g| g.1).collect();
        let classes: Vec<&str> = groups.iter().map(|g| g.2.as_str()).collect();
        diesel::sql_query(
            "INSERT INTO check_groups (check_id, country, asn, class, last_used_at) \
             SELECT $1, g.country, g.asn, g.class, $5 \
             FROM unnest($2::text[], $3::bigint[], $4::text[]) AS g(country, asn, class) \
             ON CONFLICT (check_id, country, asn, class) \
             DO UPDATE SET last_used_at = excluded.last_used_at",
        )
        .bind::<Text, _>(check_id)
        .bind::<Array<Text>, _>(&countries)
        .bind::<Array<BigInt>, _>(&asns)
        .bind::<Array<Text>, _>(&classes)
        .bind::<BigInt, _>(at)
        .execute(c)?;
        return Ok(());
    }
    // SQLite, in process: a statement per row costs little.
    for agent in &chosen.agents {
        diesel::sql_query(
            "INSERT INTO check_agents (check_id, agent_id, last_run_at) VALUES ($1, $2, $3) \
             ON CONFLICT (check_id, agent_id) DO UPDATE SET last_run_at = excluded.last_run_at",
        )
        .bind::<Text, _>(check_id)
        .bind::<Text, _>(agent)
        .bind::<BigInt, _>(at)
        .execute(conn)?;
    }
    for (country, asn, class) in groups {
        diesel::sql_query(
            "INSERT INTO check_groups (check_id, country, asn, class, last_used_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (check_id, country, asn, class) \
             DO UPDATE SET last_used_at = excluded.last_used_at",
        )
        .bind::<Text, _>(check_id)
        .bind::<Text, _>(country)
        .bind::<BigInt, _>(*asn)
        .bind::<Text, _>(class)
        .bind::<BigInt, _>(at)
        .execute(conn)?;
    }
    Ok(())
}

/// Shares `n` slots over `groups` (index for index): over their countries, each
/// country's share over its networks, each network's share over its classes, by
/// `spread`. No group gets more slots than it has agents; all `n` are given out unless
/// the groups have fewer agents in all.
pub fn shares(groups: &[Group], n: u64, spread: Spread, rng: &mut impl Rng) -> Vec<u64> {
    let mut out = vec![0; groups.len()];
    let all: Vec<usize> = (0..groups.len()).collect();
    share_level(groups, &all, 0, n, spread, rng, &mut out);
    out
}

/// Shares `n` over the groups `members` by their key at `level` (0 country, 1 network,
/// 2 class), and each part on to the next level.
fn share_level(
    groups: &[Group],
    members: &[usize],
    level: usize,
    n: u64,
    spread: Spread,
    rng: &mut impl Rng,
    out: &mut [u64],
) {
    if n == 0 || members.is_empty() {
        return;
    }
    if level == 3 {
        // One (country, network, class): a group.
        for &i in members {
            out[i] = n.min(groups[i].agents.max(0) as u64);
        }
        return;
    }
    let mut parts: BTreeMap<(String, i64), Vec<usize>> = BTreeMap::new();
    for &i in members {
        let g = &groups[i];
        let key = match level {
            0 => (g.country.clone(), 0),
            1 => (String::new(), g.asn),
            _ => (g.class.clone(), 0),
        };
        parts.entry(key).or_default().push(i);
    }
    let parts: Vec<Vec<usize>> = parts.into_values().collect();
    let sizes: Vec<u64> = parts
        .iter()
        .map(|p| p.iter().map(|&i| groups[i].agents.max(0) as u64).sum())
        .collect();
    let waited: Vec<i64> = parts
        .iter()
        .map(|p| p.iter().map(|&i| groups[i].oldest_use).min().unwrap_or(-1))
        .collect();
    let split = split(n, &sizes, &waited, spread, rng);
    for (part, share) in parts.iter().zip(split) {
        share_level(groups, part, level + 1, share, spread, rng, out);
    }
}

/// Splits `n` over parts of `sizes` agents. `waited`: when each part's least recently
/// used agent last measured the check (lower waited longer), which settles ties before
/// chance does.
fn split(n: u64, sizes: &[u64], waited: &[i64], spread: Spread, rng: &mut impl Rng) -> Vec<u64> {
    let total: u64 = sizes.iter().sum();
    if n >= total {
        return sizes.to_vec();
    }
    let chance: Vec<u32> = sizes.iter().map(|_| rng.gen()).collect();
    let mut out = vec![0u64; sizes.len()];
    let mut left = n;
    match spread {
        Spread::Proportional => {
            // Largest remainder: each part its whole share of n, then the parts with the
            // largest fractions one more each.
            let (n128, total128) = (u128::from(n), u128::from(total));
            let mut fractions = Vec::with_capacity(sizes.len());
            for (i, &size) in sizes.iter().enumerate() {
                let exact = n128 * u128::from(size);
                out[i] = (exact / total128) as u64;
                left -= out[i];
                fractions.push(exact % total128);
            }
            let mut order: Vec<usize> = (0..sizes.len()).collect();
            order.sort_by_key(|&i| (Reverse(fractions[i]), waited[i], chance[i]));
            for i in order {
                if left == 0 {
                    break;
                }
                if out[i] < sizes[i] {
                    out[i] += 1;
                    left -= 1;
                }
            }
        }
        Spread::Equal => {
            // Water-filling: the same to every part that still has agents, again and
            // again; what cannot be shared evenly goes to the parts that waited longest.
            while left > 0 {
                let mut open: Vec<usize> =
                    (0..sizes.len()).filter(|&i| out[i] < sizes[i]).collect();
                if open.is_empty() {
                    break;
                }
                let each = left / open.len() as u64;
                if each == 0 {
                    open.sort_by_key(|&i| (waited[i], chance[i]));
                    for &i in open.iter().take(left as usize) {
                        out[i] += 1;
                    }
                    break;
                }
                for i in open {
                    let add = each.min(sizes[i] - out[i]);
                    out[i] += add;
                    left -= add;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn group(country: &str, asn: i64, class: &str, agents: i64) -> Group {
        Group {
            country: country.into(),
            asn,
            class: class.into(),
            agents,
            oldest_use: -1,
        }
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(11)
    }

    #[test]
    fn proportional_follows_the_countries_sizes() {
        let groups = [
            group("DE", 1, "dsl", 60),
            group("FR", 2, "dsl", 30),
            group("NL", 3, "dsl", 10),
        ];
        assert_eq!(
            shares(&groups, 10, Spread::Proportional, &mut rng()),
            [6, 3, 1]
        );
    }

    #[test]
    fn equal_gives_each_country_the_same_until_one_runs_out() {
        let groups = [
            group("DE", 1, "dsl", 60),
            group("FR", 2, "dsl", 30),
            group("NL", 3, "dsl", 1),
        ];
        // 10 over three countries: 3, 3, 3 and one left; NL has one agent, so 9 go to
        // the other two, 5 and 4 (or 4 and 5).
        let got = shares(&groups, 10, Spread::Equal, &mut rng());
        assert_eq!(got.iter().sum::<u64>(), 10);
        assert_eq!(got[2], 1);
        assert!(got[0].abs_diff(got[1]) <= 1, "{got:?}");
    }

    #[test]
    fn each_level_splits_its_own_share() {
        // DE has two networks, one with two classes; FR one network.
        let groups = [
            group("DE", 1, "cable", 10),
            group("DE", 1, "dsl", 10),
            group("DE", 2, "fibre", 20),
            group("FR", 3, "dsl", 40),
        ];
        // Equal: 4 to DE, 4 to FR; DE's 4 as 2 per network; AS1's 2 as 1 per class.
        assert_eq!(shares(&groups, 8, Spread::Equal, &mut rng()), [1, 1, 2, 4]);
        // Proportional: DE 40 of 80 agents = 4; AS1 20 of 40 = 2; 1 per class.
        assert_eq!(
            shares(&groups, 8, Spread::Proportional, &mut rng()),
            [1, 1, 2, 4]
        );
    }

    #[test]
    fn never_more_than_a_group_has_and_all_when_slots_exceed_agents() {
        let groups = [group("DE", 1, "dsl", 2), group("FR", 2, "dsl", 3)];
        for spread in [Spread::Equal, Spread::Proportional] {
            assert_eq!(shares(&groups, 50, spread, &mut rng()), [2, 3]);
            assert_eq!(shares(&groups, 0, spread, &mut rng()), [0, 0]);
        }
    }

    #[test]
    fn ties_go_to_the_group_that_waited_longest() {
        let mut groups: Vec<Group> = (0..4).map(|i| group("DE", i, "dsl", 1)).collect();
        groups[0].oldest_use = 300;
        groups[1].oldest_use = 100;
        groups[2].oldest_use = 400;
        groups[3].oldest_use = 200;
        for spread in [Spread::Equal, Spread::Proportional] {
            assert_eq!(shares(&groups, 2, spread, &mut rng()), [0, 1, 0, 1]);
        }
    }

    #[test]
    fn selection_filters_the_groups() {
        let s = Selection {
            countries: vec!["de".into()],
            connection_classes: vec![ConnectionClass::Dsl],
            ..Selection::default()
        };
        assert!(group("DE", 1, "dsl", 1).matches(&s));
        assert!(!group("DE", 1, "cable", 1).matches(&s));
        assert!(!group("", 1, "dsl", 1).matches(&s));
        let by_asn = Selection {
            asns: vec![7],
            ..Selection::default()
        };
        assert!(group("", 7, "dsl", 1).matches(&by_asn));
        assert!(!group("DE", -1, "dsl", 1).matches(&by_asn));
    }
}
