//! The volunteer's limits beyond concurrency: how many bytes a day the agent may fetch,
//! and hours in which it works only while the machine is idle.
//!
//! The agent enforces them itself (it asks for no work while a limit holds) and tells
//! the controller why it is paused with every heartbeat, so that runs are not planned
//! around an agent that will not take them. Today's byte count is kept in the state
//! directory, so a restart does not hand the volunteer a fresh allowance.
//!
//! Idle means the 1-minute load average per core is below a threshold (default 0.5):
//! a headless agent cannot see keyboard or mouse, and a busy CPU is what a volunteer
//! notices. A measurement that starts before a limit is reached finishes, so a day's
//! bytes can pass the allowance by at most the in-flight measurements' byte caps.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::{DateTime, Local, NaiveTime, Timelike, Utc};
use serde::{Deserialize, Serialize};

/// Local hours, `HH:MM-HH:MM`; a range whose end is before its start wraps past
/// midnight (`22:00-06:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hours {
    start: NaiveTime,
    end: NaiveTime,
}

impl FromStr for Hours {
    type Err = String;
    fn from_str(s: &str) -> Result<Hours, String> {
        let bad = || format!("{s:?} is not a range of local hours like 09:00-18:00");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let parse = |t: &str| NaiveTime::parse_from_str(t.trim(), "%H:%M").map_err(|_| bad());
        let (start, end) = (parse(a)?, parse(b)?);
        if start == end {
            return Err(format!("{s:?} is an empty range of hours"));
        }
        Ok(Hours { start, end })
    }
}

impl Hours {
    /// Whether the local wall-clock time `t` falls in these hours (start inclusive).
    pub fn contains(&self, t: NaiveTime) -> bool {
        let t = t
            .with_second(0)
            .unwrap_or(t)
            .with_nanosecond(0)
            .unwrap_or(t);
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }
}

/// What the volunteer allowed, from flags or the config file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VolunteerLimits {
    /// Most bytes fetched per UTC day by measurements; `None` means no limit.
    pub max_bytes_per_day: Option<u64>,
    /// Hours in which the agent works only while the machine is idle.
    pub idle_only: Option<Hours>,
    /// Load average per core under which the machine counts as idle.
    pub idle_max_load: f64,
}

/// Default for [`VolunteerLimits::idle_max_load`].
pub const DEFAULT_IDLE_MAX_LOAD: f64 = 0.5;

/// Today's byte count, as stored in the state directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Usage {
    /// Days since the Unix epoch (UTC).
    day: i64,
    bytes: u64,
}

/// Where the machine's load comes from: `/proc/loadavg` normally, a fixed figure in tests.
pub type LoadSource = Box<dyn Fn() -> Option<f64> + Send + Sync>;

/// The real machine's 1-minute load average per core (`None` where not available).
pub fn system_load_per_core() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let one_minute: f64 = text.split_whitespace().next()?.parse().ok()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some(one_minute / cores as f64)
}

/// Decides whether the agent may take work now, and counts the bytes it fetched.
pub struct Gate {
    limits: VolunteerLimits,
    path: PathBuf,
    usage: Usage,
    load: LoadSource,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("limits", &self.limits)
            .field("usage", &self.usage)
            .finish_non_exhaustive()
    }
}

const USAGE_FILE: &str = "usage.json";

impl Gate {
    /// Opens the gate with today's count from `state_dir` (a damaged file counts as
    /// zero and is logged; it is rewritten on the next measurement).
    pub fn open(limits: VolunteerLimits, state_dir: &Path, load: LoadSource) -> Gate {
        let path = state_dir.join(USAGE_FILE);
        let usage = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "unreadable usage file; counting from zero");
                Usage::default()
            }),
            Err(_) => Usage::default(),
        };
        Gate {
            limits,
            path,
            usage,
            load,
        }
    }

    fn today(now: DateTime<Utc>) -> i64 {
        now.timestamp().div_euclid(86_400)
    }

    /// Bytes fetched today.
    pub fn used_today(&self, now: DateTime<Utc>) -> u64 {
        if self.usage.day == Self::today(now) {
            self.usage.bytes
        } else {
            0
        }
    }

    /// Counts a measurement's bytes against today and stores the count.
    pub fn record(&mut self, bytes: u64, now: DateTime<Utc>) {
        self.usage = Usage {
            day: Self::today(now),
            bytes: self.used_today(now).saturating_add(bytes),
        };
        let stored = serde_json::to_vec(&self.usage)
            .map_err(std::io::Error::other)
            .and_then(|json| {
                let tmp = self.path.with_extension("tmp");
                std::fs::write(&tmp, json)?;
                std::fs::rename(&tmp, &self.path)
            });
        if let Err(e) = stored {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot store today's byte count");
        }
    }

    /// Why the agent must not take work now, or `None` when it may.
    pub fn pause_reason(&self, now: DateTime<Utc>) -> Option<String> {
        if let Some(max) = self.limits.max_bytes_per_day {
            let used = self.used_today(now);
            if used >= max {
                return Some(format!(
                    "daily byte limit reached ({used} of {max} bytes); resumes at 00:00 UTC"
                ));
            }
        }
        if let Some(hours) = self.limits.idle_only {
            let local = now.with_timezone(&Local).time();
            if hours.contains(local) {
                // Unknown load (no /proc) counts as busy: the volunteer asked for caution.
                let load = (self.load)();
                if load.is_none_or(|l| l >= self.limits.idle_max_load) {
                    return Some(format!(
                        "machine busy during idle-only hours (load per core {}, limit {})",
                        load.map_or("unknown".into(), |l| format!("{l:.2}")),
                        self.limits.idle_max_load
                    ));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn fixed(load: f64) -> LoadSource {
        Box::new(move || Some(load))
    }

    fn noon() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()
    }

    #[test]
    fn hours_parse_and_wrap_past_midnight() {
        let day: Hours = "09:00-18:00".parse().unwrap();
        let t = |h, m| NaiveTime::from_hms_opt(h, m, 0).unwrap();
        assert!(day.contains(t(9, 0)) && day.contains(t(17, 59)));
        assert!(!day.contains(t(18, 0)) && !day.contains(t(8, 59)));
        let night: Hours = "22:00-06:00".parse().unwrap();
        assert!(night.contains(t(23, 30)) && night.contains(t(5, 0)));
        assert!(!night.contains(t(12, 0)));
        let err = "9-5".parse::<Hours>().unwrap_err();
        assert!(err.contains("like 09:00-18:00"), "{err}");
        assert!("10:00-10:00"
            .parse::<Hours>()
            .unwrap_err()
            .contains("empty"));
    }

    #[test]
    fn daily_bytes_pause_the_agent_survive_a_restart_and_reset_the_next_day() {
        let dir = tempfile::tempdir().unwrap();
        let limits = VolunteerLimits {
            max_bytes_per_day: Some(1_000),
            ..VolunteerLimits::default()
        };
        let mut gate = Gate::open(limits.clone(), dir.path(), fixed(0.0));
        assert_eq!(gate.pause_reason(noon()), None);
        gate.record(600, noon());
        assert_eq!(gate.pause_reason(noon()), None);
        gate.record(600, noon());
        let why = gate.pause_reason(noon()).unwrap();
        assert!(why.contains("1200 of 1000 bytes"), "{why}");

        // A restart keeps today's count.
        let gate = Gate::open(limits, dir.path(), fixed(0.0));
        assert_eq!(gate.used_today(noon()), 1_200);
        assert!(gate.pause_reason(noon()).is_some());
        // Tomorrow starts afresh.
        let tomorrow = noon() + chrono::Duration::days(1);
        assert_eq!(gate.used_today(tomorrow), 0);
        assert_eq!(gate.pause_reason(tomorrow), None);
    }

    #[test]
    fn idle_only_hours_pause_a_busy_machine_only_inside_them() {
        let dir = tempfile::tempdir().unwrap();
        // Hours that cover the whole local day except one minute, whatever the zone.
        let local_noon = noon().with_timezone(&Local).time();
        let start = local_noon - chrono::Duration::hours(1);
        let end = local_noon + chrono::Duration::hours(1);
        let around_noon = Hours { start, end };
        let limits = |idle_only| VolunteerLimits {
            idle_only,
            idle_max_load: 0.5,
            ..VolunteerLimits::default()
        };
        let busy = Gate::open(limits(Some(around_noon)), dir.path(), fixed(1.7));
        let why = busy.pause_reason(noon()).unwrap();
        assert!(why.contains("load per core 1.70"), "{why}");
        let idle = Gate::open(limits(Some(around_noon)), dir.path(), fixed(0.1));
        assert_eq!(idle.pause_reason(noon()), None);
        // Outside the hours a busy machine still works.
        let evening = noon() + chrono::Duration::hours(6);
        assert_eq!(busy.pause_reason(evening), None);
        // Without idle-only hours, load never matters.
        let free = Gate::open(limits(None), dir.path(), fixed(9.0));
        assert_eq!(free.pause_reason(noon()), None);
    }

    #[test]
    fn load_is_read_from_this_machine() {
        // Linux CI: /proc/loadavg exists and gives a finite, non-negative figure.
        let load = system_load_per_core().unwrap();
        assert!(load.is_finite() && load >= 0.0, "{load}");
    }
}
