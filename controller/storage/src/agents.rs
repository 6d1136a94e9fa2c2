//! The `agents` table: an enrolled agent, where it is, its line as declared and as
//! calibrated, and what it can measure.

use diesel::prelude::*;
use lastmile_protocol::{CheckKind, ConnectionClass, Location};

use crate::schema::agents;

/// An agent as stored.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = agents)]
pub struct Agent {
    pub id: String,
    pub volunteer_id: String,
    pub name: String,
    pub token_hash: String,
    pub declared_class: String,
    pub version: String,
    pub max_concurrent: i32,
    pub ip: String,
    pub country: Option<String>,
    pub region: Option<String>,
    pub city: Option<String>,
    pub asn: Option<i64>,
    pub as_org: Option<String>,
    pub enrolled_at: i64,
    pub last_heartbeat_at: Option<i64>,
    pub measured_class: Option<String>,
    pub calibrated_at: Option<i64>,
    pub rtt_us: Option<i64>,
    pub down_bps: Option<i64>,
    pub up_bps: Option<i64>,
    pub class_mismatch: bool,
    pub calibration_day: i64,
    pub calibration_bytes: i64,
    /// Why the agent takes no work now, as its last heartbeat said.
    pub paused_reason: Option<String>,
    /// The check kinds the agent can measure, comma-separated (see [`Agent::measures`]).
    pub check_kinds: String,
}

impl Agent {
    /// The class selection and reports use: the measured class once calibration has
    /// run, the declared one until then.
    pub fn connection_class(&self) -> Option<ConnectionClass> {
        self.measured_class
            .as_deref()
            .unwrap_or(&self.declared_class)
            .parse()
            .ok()
    }

    /// Whether the agent said it can measure checks of `kind`.
    pub fn measures(&self, kind: CheckKind) -> bool {
        self.check_kinds.split(',').any(|k| k == kind.as_str())
    }

    /// The agent's location as last resolved.
    pub fn location(&self) -> Location {
        Location {
            country: self.country.clone(),
            region: self.region.clone(),
            city: self.city.clone(),
            asn: self.asn.and_then(|a| u32::try_from(a).ok()),
            as_org: self.as_org.clone(),
        }
    }
}
