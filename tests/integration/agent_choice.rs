//! Which agents a run chooses: spread over countries, networks and classes, rotated
//! over the check's runs, and the best remaining agent for a slot that failed. On both
//! backends.

use std::collections::{BTreeMap, HashMap, HashSet};

use diesel::prelude::*;
use lastmile_domain::clock::now_us;
use lastmile_domain::{agents, scheduling};
use lastmile_storage::schema::{agents as agents_t, run_agents};
use serde_json::{json, Value};

use crate::leasing::submission;
use crate::per_backend;
use crate::scene;
use crate::support::{TestApp, PLACES};

per_backend!(
    runs_spread_over_countries_equally_or_in_proportion,
    runs_rotate_over_the_agents_least_recently_used_first,
    a_failed_slot_goes_to_the_best_agent_left,
    a_group_with_fewer_agents_than_the_census_counted_leaves_its_slots_to_the_others,
);

/// Agents from the test place `place` (index into [`PLACES`]): `n` of them, of `class`;
/// their tokens.
async fn agents_at(app: &TestApp, key: &str, place: usize, class: &str, n: usize) -> Vec<String> {
    let mut tokens = Vec::new();
    for _ in 0..n {
        tokens.push(app.agent(PLACES[place].0, key, class, 4).await);
    }
    tokens
}

fn agent_id(app: &TestApp, token: &str) -> String {
    let mut conn = app.db().conn().unwrap();
    agents::agent_by_token(&mut conn, token)
        .unwrap()
        .unwrap()
        .id
}

/// The agents planned into `run`, with their countries.
fn planned(app: &TestApp, run: &Value) -> BTreeMap<String, String> {
    let run_id = run["id"].as_str().unwrap();
    let mut conn = app.db().conn().unwrap();
    let ids: Vec<String> = run_agents::table
        .filter(run_agents::run_id.eq(run_id))
        .select(run_agents::agent_id)
        .load(&mut conn)
        .unwrap();
    ids.into_iter()
        .map(|id| {
            let country: Option<String> = agents_t::table
                .find(&id)
                .select(agents_t::country)
                .first(&mut conn)
                .unwrap();
            (id, country.unwrap_or_default())
        })
        .collect()
}

fn per_country(planned: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for country in planned.values() {
        *counts.entry(country.clone()).or_default() += 1;
    }
    counts
}

async fn new_run(app: &TestApp, owner: &str, check: &str) -> Value {
    let (status, run) = app.ask_run(owner, check).await;
    assert_eq!(status, 201, "{run}");
    run
}

async fn runs_spread_over_countries_equally_or_in_proportion(db: crate::support::TestDb) {
    let (app, site, owner, key) = scene::start(&db).await;
    // 12 agents in Germany (DE, 8 behind AS64501, 4 behind AS64504), 2 in the US, 2 in
    // Brazil: the fast German networks would take whole runs if the first to ask won.
    agents_at(&app, &key, 0, "dsl", 8).await;
    agents_at(&app, &key, 3, "fibre", 4).await;
    agents_at(&app, &key, 1, "cable", 2).await;
    agents_at(&app, &key, 2, "fibre", 2).await;

    let equal = app
        .site_check(
            &owner,
            &site,
            site.origin(),
            json!({"agents_per_run": 6, "spread": "equal"}),
        )
        .await;
    let (_, shown) = app.get(&format!("/api/v1/checks/{equal}"), &owner).await;
    assert_eq!(shown["selection"]["spread"], "equal", "{shown}");
    for _ in 0..3 {
        let run = new_run(&app, &owner, &equal).await;
        assert_eq!(
            (run["requested"].as_u64(), run["eligible_agents"].as_u64()),
            (Some(6), Some(16))
        );
        let chosen = planned(&app, &run);
        let want: BTreeMap<String, usize> =
            [("BR".into(), 2), ("DE".into(), 2), ("US".into(), 2)].into();
        assert_eq!(per_country(&chosen), want, "equally: two from each country");
    }

    // In proportion: 8 of 16 agents, so half of each country's (DE 6, US 1, BR 1), and
    // Germany's 6 in proportion to its networks (AS64501 4, AS64504 2).
    let site_id = shown["site_id"].clone();
    let proportional = app
        .create_check(
            &owner,
            json!({"site_id": site_id, "url": site.origin(), "selection": {"agents_per_run": 8}}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = new_run(&app, &owner, &proportional).await;
    let chosen = planned(&app, &run);
    let want: BTreeMap<String, usize> =
        [("BR".into(), 1), ("DE".into(), 6), ("US".into(), 1)].into();
    assert_eq!(
        per_country(&chosen),
        want,
        "in proportion to the countries' agents"
    );
    let mut conn = app.db().conn().unwrap();
    let behind_64504 = agents_t::table
        .filter(agents_t::id.eq_any(chosen.keys()))
        .filter(agents_t::asn.eq(64_504))
        .count()
        .get_result::<i64>(&mut conn)
        .unwrap();
    assert_eq!(
        behind_64504, 2,
        "Germany's share in proportion to its networks"
    );
    drop(conn);

    app.controller.stop().await.unwrap();
}

async fn runs_rotate_over_the_agents_least_recently_used_first(db: crate::support::TestDb) {
    let (app, site, owner, key) = scene::start(&db).await;
    let tokens = agents_at(&app, &key, 0, "dsl", 6).await;
    let ids: HashMap<String, String> = tokens
        .iter()
        .map(|t| (agent_id(&app, t), t.clone()))
        .collect();
    let check = app
        .site_check(&owner, &site, site.origin(), json!({"agents_per_run": 2}))
        .await;

    // Three runs of two over six agents of one network: each agent once.
    let mut used = HashSet::new();
    let mut first = Vec::new();
    for i in 0..3 {
        let run = new_run(&app, &owner, &check).await;
        let chosen: Vec<String> = planned(&app, &run).into_keys().collect();
        assert_eq!(chosen.len(), 2);
        for agent in &chosen {
            assert!(
                used.insert(agent.clone()),
                "run {i} chose {agent} again before the others had a turn"
            );
        }
        if i == 0 {
            first = chosen;
        }
    }
    assert_eq!(used.len(), 6);
    // The fourth goes back to the first run's agents: they waited longest.
    let fourth = new_run(&app, &owner, &check).await;
    let chosen: Vec<String> = planned(&app, &fourth).into_keys().collect();
    assert_eq!(chosen, first);

    // The chosen agents get the run's work; the others find none of it.
    let mut leased = 0;
    for (id, token) in &ids {
        let (_, lease) = app.lease(token, 4).await;
        let runs: Vec<&str> = lease["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["run_id"].as_str().unwrap())
            .collect();
        let in_fourth = runs.contains(&fourth["id"].as_str().unwrap());
        assert_eq!(in_fourth, chosen.contains(id), "{id}: {lease}");
        leased += runs.len();
    }
    assert_eq!(leased, 8, "each of the four runs' two slots, once");
    app.controller.stop().await.unwrap();
}

async fn a_failed_slot_goes_to_the_best_agent_left(db: crate::support::TestDb) {
    let (app, site, owner, key) = scene::start(&db).await;
    // Two German DSL agents behind AS64501, two American cable agents, one Brazilian.
    let german = agents_at(&app, &key, 0, "dsl", 2).await;
    let american = agents_at(&app, &key, 1, "cable", 2).await;
    let brazilian = agents_at(&app, &key, 2, "fibre", 1).await;
    let check = app
        .site_check(
            &owner,
            &site,
            site.origin(),
            json!({"agents_per_run": 3, "spread": "equal"}),
        )
        .await;
    let run = new_run(&app, &owner, &check).await;
    let before = planned(&app, &run);
    assert_eq!(before.len(), 3);

    // The American and the Brazilian measure; the chosen German agent leases its slot
    // and goes silent.
    let (chosen_de, other_de) = if before.contains_key(&agent_id(&app, &german[0])) {
        (&german[0], &german[1])
    } else {
        (&german[1], &german[0])
    };
    for token in american.iter().chain(&brazilian) {
        if before.contains_key(&agent_id(&app, token)) {
            let (_, lease) = app.lease(token, 1).await;
            let result = submission(&lease["tasks"][0]["assignment_id"], 40_000);
            let (status, ack) = app.submit(token, result).await;
            assert_eq!(status, 200, "{ack}");
        }
    }
    let (_, lease) = app.lease(chosen_de, 1).await;
    assert_eq!(lease["tasks"].as_array().unwrap().len(), 1, "{lease}");
    let (_, nothing) = app.lease(other_de, 1).await;
    assert_eq!(
        nothing["tasks"].as_array().unwrap().len(),
        0,
        "not in the run yet"
    );

    // (Meanwhile the agents heartbeat: they are still online then.)
    let policy = scheduling::SchedulingPolicy {
        online_window_us: 10 * app.controller.state.policy.lease_us,
        ..app.controller.state.policy
    };
    let later = now_us() + policy.lease_us + 1_000_000;
    let outcome = app
        .db()
        .run(move |c| scheduling::expire(c, &policy, later))
        .await
        .unwrap();
    assert_eq!(
        (outcome.expired_leases, outcome.reoffered, outcome.unclaimed),
        (1, 1, 0)
    );
    // The slot goes to the other German DSL agent (same country, network and class),
    // not to the American left over.
    let after = planned(&app, &run);
    let added: Vec<&String> = after.keys().filter(|a| !before.contains_key(*a)).collect();
    assert_eq!(added, [&agent_id(&app, other_de)]);

    // It does not come for it either: after the offer window one more agent is planned
    // in, the best left (no German DSL agent is: the American), and the slot offered anew.
    let later = later + policy.offer_us + 1_000_000;
    let outcome = app
        .db()
        .run(move |c| scheduling::expire(c, &policy, later))
        .await
        .unwrap();
    assert_eq!(outcome.unclaimed, 1);
    let last = planned(&app, &run);
    assert_eq!(last.len(), after.len() + 1);
    let left_us = american
        .iter()
        .find(|t| !after.contains_key(&agent_id(&app, t)))
        .unwrap();
    assert!(last.contains_key(&agent_id(&app, left_us)));
    let lease = app.lease_when_offered(left_us, 1).await;
    assert_eq!(lease["tasks"][0]["run_id"], run["id"], "{lease}");
    // Offered anew at the last pass: the next pass has nothing to do.
    let outcome = app
        .db()
        .run(move |c| scheduling::expire(c, &policy, later + 1))
        .await
        .unwrap();
    assert_eq!(outcome.unclaimed, 0);
    app.controller.stop().await.unwrap();
}

/// A scheduler pass counts the eligible agents once ([`agent_choice::Census`]) for all
/// of its runs; an agent that stops being eligible meanwhile is not chosen, and the
/// slots its group cannot fill go to the groups that still have agents.
async fn a_group_with_fewer_agents_than_the_census_counted_leaves_its_slots_to_the_others(
    db: crate::support::TestDb,
) {
    use lastmile_domain::agent_choice::{self, Census, Pool};
    use lastmile_domain::check_terms::StoredCheck;
    let (app, site, owner, key) = scene::start(&db).await;
    let german: Vec<String> = agents_at(&app, &key, 0, "dsl", 3)
        .await
        .iter()
        .map(|t| agent_id(&app, t))
        .collect();
    let american: Vec<String> = agents_at(&app, &key, 1, "cable", 3)
        .await
        .iter()
        .map(|t| agent_id(&app, t))
        .collect();
    let check = app
        .site_check(
            &owner,
            &site,
            site.origin(),
            json!({"agents_per_run": 4, "spread": "equal"}),
        )
        .await;
    let mut conn = app.db().conn().unwrap();
    let check = lastmile_storage::checks::get_any(&mut conn, &check).unwrap();
    let selection = check.selection();
    let pool = Pool {
        check_id: &check.id,
        selection: &selection,
        kind: lastmile_protocol::CheckKind::Http,
        since: now_us() - app.controller.state.policy.online_window_us,
        run_id: None,
    };
    let census = Census::take(&mut conn, pool.since).unwrap();
    assert_eq!(census.count(&pool), 6);
    // Two of the German agents are revoked after the count.
    diesel::update(agents_t::table.filter(agents_t::id.eq_any(&german[..2])))
        .set(agents_t::revoked_at.eq(Some(now_us())))
        .execute(&mut conn)
        .unwrap();
    let choice = agent_choice::choose(&mut conn, &census, &pool, 4).unwrap();
    let chosen: HashSet<&String> = choice.agents.iter().collect();
    assert_eq!(chosen.len(), 4, "{choice:?}");
    assert!(chosen.contains(&german[2]), "{choice:?}");
    for agent in &american {
        assert!(
            chosen.contains(agent),
            "the American group fills the German slot: {choice:?}"
        );
    }
    assert_eq!(choice.groups.len(), 4);
    drop(conn);
    app.controller.stop().await.unwrap();
}
