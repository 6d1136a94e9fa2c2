//! What a stored check asks for, in the domain's types: which agents ([`Selection`]),
//! what kind of measurement and which objectives ([`StoredCheck`]), and the task a run
//! hands its agents ([`TaskSpec`]). Below both the checks workflow (create, edit,
//! views) and scheduling, which read checks but never each other.

use lastmile_protocol::{CheckKind, ConnectionClass};
use lastmile_storage::checks::Check;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::agents::Agent;
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
        }
    }
}

impl Selection {
    /// Whether `agent` passes every filter.
    pub fn matches(&self, agent: &Agent) -> bool {
        let country_ok = self.countries.is_empty()
            || agent
                .country
                .as_deref()
                .is_some_and(|c| self.countries.iter().any(|w| w.eq_ignore_ascii_case(c)));
        let asn_ok = self.asns.is_empty()
            || agent
                .asn
                .is_some_and(|a| self.asns.iter().any(|&w| i64::from(w) == a));
        let class_ok = self.connection_classes.is_empty()
            || agent
                .connection_class()
                .is_some_and(|c| self.connection_classes.contains(&c));
        country_ok && asn_ok && class_ok
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
}

impl StoredCheck for Check {
    fn selection(&self) -> Selection {
        Selection {
            countries: serde_json::from_str(&self.countries).unwrap_or_default(),
            asns: serde_json::from_str(&self.asns).unwrap_or_default(),
            connection_classes: serde_json::from_str(&self.connection_classes).unwrap_or_default(),
            agents_per_run: self.agents_per_run.max(0) as u32,
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
}

impl TaskSpec {
    /// The task `check` describes now.
    pub fn of_check(check: &Check) -> Result<TaskSpec> {
        Ok(TaskSpec {
            kind: check.check_kind()?,
            url: check.url.clone(),
            expected_status: check.expected_status(),
            max_bytes: check.max_bytes.max(0) as u64,
            body_contains: check.body_contains.clone(),
            timeout_ms: check.timeout_ms.max(0) as u64,
            max_redirects: check.max_redirects.max(0) as u32,
        })
    }
}
