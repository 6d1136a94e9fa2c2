//! What a stored check asks for, in the domain's types: which agents ([`Selection`]),
//! what kind of measurement and which objectives ([`StoredCheck`]), and the task a run
//! hands its agents ([`TaskSpec`]). Below both the checks workflow (create, edit,
//! views) and scheduling, which read checks but never each other.

use lastmile_protocol::{CheckKind, ConnectionClass, ThroughputTask, UdpTask, VideoTask};
use lastmile_storage::checks::Check;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::objectives::Objective;

/// Which agents run a check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Selection {
    /// ISO 3166-1 alpha-2 codes; empty means any country.
    pub countries: Vec<String>,
    /// Autonomous system numbers; empty means any.
    pub asns: Vec<u32>,
    /// Connection classes; empty means any.
    pub connection_classes: Vec<ConnectionClass>,
    /// How many agents measure each run (at most); 10 when not given.
    pub agents_per_run: u32,
    /// How a run's agents are spread over the matching countries, then networks (ASNs),
    /// then connection classes: in proportion to how many agents each has (the
    /// default), or equally.
    pub spread: Spread,
}

/// How a run's agents are spread over the groups of agents that match a selection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Spread {
    /// Each country (then network, then class) gets a share of the run's agents in
    /// proportion to its number of matching agents: the run looks like the network.
    #[default]
    Proportional,
    /// Each country (then network, then class) gets the same number of the run's
    /// agents, as far as it has agents: a small country counts as much as a big one.
    Equal,
}

impl Spread {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Spread::Proportional => "proportional",
            Spread::Equal => "equal",
        }
    }

    /// A stored name read back; an unknown one (written by a newer controller) reads as
    /// the default.
    pub fn from_stored(s: &str) -> Spread {
        match s {
            "equal" => Spread::Equal,
            _ => Spread::Proportional,
        }
    }
}

/// Agents per run when a selection does not say.
pub const DEFAULT_AGENTS_PER_RUN: u32 = 10;

impl Default for Selection {
    fn default() -> Selection {
        Selection {
            countries: Vec::new(),
            asns: Vec::new(),
            connection_classes: Vec::new(),
            agents_per_run: DEFAULT_AGENTS_PER_RUN,
            spread: Spread::Proportional,
        }
    }
}

/// What the domain reads out of a stored check's JSON columns, in its own types.
pub trait StoredCheck {
    /// The check's selection filters.
    fn selection(&self) -> Selection;
    /// The check's kind. A stored kind this controller does not know (written by a newer
    /// one) is an internal error: nothing could measure it.
    fn check_kind(&self) -> Result<CheckKind>;
    /// The check's SLA objectives.
    fn objectives(&self) -> Vec<Objective>;
    /// A throughput check's load (`None` for the other kinds).
    fn throughput(&self) -> Option<ThroughputTask>;
    /// A video check's session (`None` for the other kinds).
    fn video(&self) -> Option<VideoTask>;
    /// A udp check's stream (`None` for the other kinds).
    fn udp(&self) -> Option<UdpStream>;
}

impl StoredCheck for Check {
    fn selection(&self) -> Selection {
        Selection {
            countries: serde_json::from_str(&self.countries).unwrap_or_default(),
            asns: serde_json::from_str(&self.asns).unwrap_or_default(),
            connection_classes: serde_json::from_str(&self.connection_classes).unwrap_or_default(),
            agents_per_run: self.agents_per_run.max(0) as u32,
            spread: Spread::from_stored(&self.spread),
        }
    }

    fn check_kind(&self) -> Result<CheckKind> {
        self.kind
            .parse()
            .map_err(|e| Error::Internal(format!("check {}: {e}", self.id)))
    }

    fn objectives(&self) -> Vec<Objective> {
        serde_json::from_str(&self.objectives).unwrap_or_default()
    }

    fn throughput(&self) -> Option<ThroughputTask> {
        let stored = self.throughput.as_deref()?;
        // Written by `checks::validated`; a value it could not read would be a bug, and
        // the kind's default load is what the check asked for when it named none.
        Some(serde_json::from_str(stored).unwrap_or_default())
    }

    fn video(&self) -> Option<VideoTask> {
        let stored = self.video.as_deref()?;
        // As for the load: written by `checks::validated`.
        Some(serde_json::from_str(stored).unwrap_or_default())
    }

    fn udp(&self) -> Option<UdpStream> {
        let stored = self.udp.as_deref()?;
        // As for the load: written by `checks::validated`.
        Some(serde_json::from_str(stored).unwrap_or_default())
    }
}

/// A udp check's stream as owners write it and the check stores it: any field may be
/// left out (its default applies), a misspelt one is refused. The reflector's token is
/// not part of it: it is the site's, put into each run's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct UdpStream {
    /// Between probes, milliseconds (10–1,000); default 20 (50 a second).
    pub interval_ms: u64,
    /// How long the stream lasts, milliseconds (1,000–60,000, at most 3,000 probes);
    /// default 10,000.
    pub duration_ms: u64,
    /// Each probe's UDP payload, bytes (40–1,200); default 172.
    pub packet_bytes: u32,
}

impl Default for UdpStream {
    fn default() -> Self {
        UdpStream {
            interval_ms: lastmile_protocol::DEFAULT_UDP_INTERVAL_MS,
            duration_ms: lastmile_protocol::DEFAULT_UDP_DURATION_MS,
            packet_bytes: lastmile_protocol::DEFAULT_UDP_PACKET_BYTES,
        }
    }
}

impl UdpStream {
    /// The task of this stream to the reflector that answers with `token`.
    pub fn task(self, token: &str) -> UdpTask {
        UdpTask {
            interval_ms: self.interval_ms,
            duration_ms: self.duration_ms,
            packet_bytes: self.packet_bytes,
            token: token.to_owned(),
        }
    }
}

/// What the agents of one run are asked to measure: the check's task as it was when the
/// run was admitted. Stored with the run (`runs.task`, JSON), so that editing the check
/// while the run is open changes later runs only, and every assignment of a run
/// (re-offers included) measures what was admitted and priced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub kind: CheckKind,
    pub url: String,
    pub expected_status: Vec<u16>,
    pub max_bytes: u64,
    pub body_contains: Option<String>,
    pub timeout_ms: u64,
    pub max_redirects: u32,
    /// A throughput check's load; absent for the other kinds (and in runs admitted
    /// before the kind existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<ThroughputTask>,
    /// A video check's session; absent for the other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoTask>,
    /// A udp check's stream, with its site's token; absent for the other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<UdpTask>,
}

impl TaskSpec {
    /// The task `check` describes now; `site_token` is its site's verification token,
    /// which a udp check's reflector must answer with.
    pub fn of_check(check: &Check, site_token: &str) -> Result<TaskSpec> {
        Ok(TaskSpec {
            kind: check.check_kind()?,
            url: check.url.clone(),
            expected_status: check.expected_status(),
            max_bytes: check.max_bytes.max(0) as u64,
            body_contains: check.body_contains.clone(),
            timeout_ms: check.timeout_ms.max(0) as u64,
            max_redirects: check.max_redirects.max(0) as u32,
            throughput: check.throughput(),
            video: check.video(),
            udp: check.udp().map(|stream| stream.task(site_token)),
        })
    }
}

/// The kind of task a run measures: its frozen task's (`runs.task`), or, for a run
/// admitted before tasks were frozen, its check's kind now (`checks.kind`).
pub fn run_kind(task: Option<&str>, check_kind: &str) -> Option<CheckKind> {
    task.and_then(|t| serde_json::from_str::<TaskSpec>(t).ok())
        .map(|spec| spec.kind)
        .or_else(|| check_kind.parse().ok())
}

/// The kinds of runs whose task is frozen, by run id, as this process read them: a
/// run's task never changes and its id is never reused, so the accept path reads only
/// the runs it has not seen (a live run's results arrive over minutes, in many
/// batches). Runs from before tasks were frozen take their check's kind now and are
/// not kept. Emptied when full.
static FROZEN_RUN_KINDS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, CheckKind>>,
> = std::sync::LazyLock::new(Default::default);

/// Most runs [`FROZEN_RUN_KINDS`] holds (about 100 bytes each).
const FROZEN_RUN_KINDS_MAX: usize = 100_000;

/// The kind of each of `run_ids` ([`run_kind`]) that exists, reading only the runs this
/// process has not seen before, [`KEYS_PER_LOOKUP`] at a time. A batch's results read
/// their runs' tasks twice (the summary check, the verification) and ~160 runs a batch
/// in `bench ingest --in-process --interleave`, where a table of runs small enough to
/// scan was compared row by row with each id: 2.9 ms a batch with 600 runs stored.
///
/// [`KEYS_PER_LOOKUP`]: lastmile_storage::agents::KEYS_PER_LOOKUP
pub fn run_kinds(
    conn: &mut lastmile_storage::DbConn,
    run_ids: &[&str],
) -> Result<std::collections::HashMap<String, CheckKind>> {
    use diesel::prelude::*;
    use lastmile_storage::schema::{checks, runs};
    let mut kinds = std::collections::HashMap::with_capacity(run_ids.len());
    let mut unknown: Vec<&str> = Vec::new();
    match FROZEN_RUN_KINDS.lock() {
        Ok(known) => {
            for &run in run_ids {
                match known.get(run) {
                    Some(kind) => {
                        kinds.insert(run.to_owned(), *kind);
                    }
                    None => unknown.push(run),
                }
            }
        }
        Err(_) => unknown.extend_from_slice(run_ids),
    }
    unknown.sort_unstable();
    unknown.dedup();
    for chunk in unknown.chunks(lastmile_storage::agents::KEYS_PER_LOOKUP) {
        let rows: Vec<(String, Option<String>, String)> = runs::table
            .inner_join(checks::table.on(checks::id.eq(runs::check_id)))
            .filter(runs::id.eq_any(chunk))
            .select((runs::id, runs::task, checks::kind))
            .load(conn)?;
        let mut frozen = Vec::with_capacity(rows.len());
        for (run, task, check_kind) in rows {
            if let Some(kind) = run_kind(task.as_deref(), &check_kind) {
                if task.is_some() {
                    frozen.push((run.clone(), kind));
                }
                kinds.insert(run, kind);
            }
        }
        if let Ok(mut known) = FROZEN_RUN_KINDS.lock() {
            if known.len() + frozen.len() > FROZEN_RUN_KINDS_MAX {
                known.clear();
            }
            known.extend(frozen);
        }
    }
    Ok(kinds)
}
