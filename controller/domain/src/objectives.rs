//! SLA objectives: what a check promises, and whether a report row kept the promise.
//!
//! An objective is a latency bound, `{"phase": "ttfb", "percentile": 95,
//! "max_ms": 800}` ("ttfb p95 <= 800 ms"), on a phase or on a latency figure
//! (`{"figure": "loaded_latency", "percentile": 95, "max_ms": 300}`, "loaded_latency
//! p95 <= 300 ms"), a floor on a rate figure, `{"figure":
//! "goodput", "percentile": 10, "min_kbps": 10000}` ("goodput p10 >= 10 Mbit/s": at
//! most 10 % of measurements below 10 Mbit/s), a ceiling on a share figure, `{"figure":
//! "loss", "percentile": 95, "max_percent": 1}` ("loss p95 <= 1 %": at most 5 % of
//! udp streams lost more than 1 % of their packets), or an availability floor,
//! `{"availability_min": 99.5}` (percent). Each may carry `"connection_class"`, and
//! then applies only to report rows of that class (so a report must be grouped by
//! `connection_class` to show it); without one it applies to every row. Objectives are
//! stored with the check as JSON text and validated when the check is created.
//!
//! Each report row states, per objective that applies to it:
//!
//! - `met`: latency: the row's pNN (from the merged histogram, as reported) `<= max_ms`;
//!   share: the row's pNN `<= max_percent`; rate: the row's pNN `>= min_kbps`;
//!   availability: `availability >=
//!   availability_min`. `null` when the row has no successful sample of that phase or
//!   figure.
//! - `actual`: pNN in ms (latency), percent (share) or kbit/s (rate), or availability
//!   in percent; `actual_ci` its interval at the
//!   report's confidence ([`crate::confidence`]), and `conclusive`: whether that whole
//!   interval lies on the verdict's side of the limit (a breach "for sure" vs a breach
//!   that more samples might undo); `null` when there is no interval.
//! - `margin`: how far from the limit, positive on the good side: `max_ms - actual` ms,
//!   `actual - min_kbps` kbit/s, or `actual - availability_min` percentage points.
//! - **Error budget.** Latency `pNN <= X` allows a fraction `a = (100 - NN) / 100` of the
//!   samples above X: `allowed_bad = a · n` over the row's n successful samples;
//!   `bad` = samples above X (counted from the histogram: samples whose bucket's highest
//!   value exceeds X, the same rule `met` uses, so `met` ⇔ `remaining >= 0` up to
//!   rounding of `a · n`). Availability `>= A %` allows `allowed_bad = (1 - A/100) · n`
//!   failures over the row's n measurements, `bad` = failures. In both,
//!   `error_budget_remaining = 1 - bad / allowed_bad`: 1 untouched, 0 spent, negative
//!   overspent (-1: twice the allowance used). Rate `pNN >= X` allows the fraction
//!   `NN / 100` of the samples below X (samples whose bucket's lowest value is below X).

use hdrhistogram::Histogram;
use lastmile_protocol::{ConnectionClass, Figure, Phase, Unit};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::confidence::{self, Confidence};
use crate::error::{Error, Result};
use crate::histogram::MAX_US;

/// One SLA objective of a check.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"phase": "ttfb", "percentile": 95, "max_ms": 800, "connection_class": "dsl"}))]
pub struct Objective {
    /// Latency objective: the phase bounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Latency objective: which percentile, above 0 and below 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentile: Option<f64>,
    /// Latency objective: the bound, milliseconds (of `phase`, or of a latency
    /// `figure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
    /// Rate objective: the figure bounded from below (`goodput`) with `min_kbps`. Latency
    /// objective on a figure that is not a phase (`idle_latency`, `loaded_latency`,
    /// `rtt`, `jitter`, ...): bounded from above with `max_ms` (the phases are bounded
    /// with `phase`). Share objective (`loss`): bounded from above with `max_percent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub figure: Option<Figure>,
    /// Rate objective: the floor, kbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_kbps: Option<f64>,
    /// Share objective: the ceiling, percent (above 0, at most 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_percent: Option<f64>,
    /// Availability objective: the floor, percent (above 0, below 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_min: Option<f64>,
    /// Only rows of this connection class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_class: Option<ConnectionClass>,
}

impl Objective {
    /// The figure a latency objective bounds from above: its phase, or its latency
    /// figure; `None` for a rate or availability objective.
    pub fn latency_figure(&self) -> Option<Figure> {
        self.max_ms?;
        self.phase.map(Figure::from).or(self.figure)
    }

    /// Whether this is a rate objective (a figure with a floor in kbit/s).
    pub fn is_rate(&self) -> bool {
        self.min_kbps.is_some()
    }

    /// Whether this is a share objective (a figure with a ceiling in percent).
    pub fn is_share(&self) -> bool {
        self.max_percent.is_some()
    }

    /// Reads the written form people use: `ttfb p95 <= 800 ms`, `total p99 <= 3 s`,
    /// `availability >= 99.5 %`, each optionally ending `for dsl`. The error says what
    /// was expected.
    pub fn parse_line(line: &str) -> Result<Objective> {
        let bad = || {
            Error::invalid(
                "invalid_objective",
                format!(
                    "{:?} is not an objective; write e.g. \"ttfb p95 <= 800 ms\", \"goodput p10 >= 10 Mbit/s\" or \"availability >= 99.5 %\", optionally ending \"for dsl\"",
                    line.trim()
                ),
            )
        };
        let text = line.trim().to_lowercase().replace('%', " % ");
        let (body, class) = match text.rsplit_once(" for ") {
            Some((b, c)) => (
                b.to_owned(),
                Some(c.trim().parse::<ConnectionClass>().map_err(|_| bad())?),
            ),
            None => (text.clone(), None),
        };
        let words: Vec<&str> = body.split_whitespace().collect();
        let number = |w: &str| w.parse::<f64>().map_err(|_| bad());
        match words.as_slice() {
            ["availability", ">=", a, rest @ ..] if rest.is_empty() || rest == ["%"] => {
                Ok(Objective {
                    availability_min: Some(number(a)?),
                    connection_class: class,
                    ..Objective::default()
                })
            }
            [name, pct, "<=", v, "%"] if pct.starts_with('p') => Ok(Objective {
                figure: Some(name.parse().map_err(|_| bad())?),
                percentile: Some(number(&pct[1..])?),
                max_percent: Some(number(v)?),
                connection_class: class,
                ..Objective::default()
            }),
            [name, pct, "<=", v, unit] if pct.starts_with('p') => {
                let factor = match *unit {
                    "ms" => 1.0,
                    "s" => 1000.0,
                    _ => return Err(bad()),
                };
                let figure: Figure = name.parse().map_err(|_| bad())?;
                Ok(Objective {
                    phase: figure.phase(),
                    figure: figure.phase().is_none().then_some(figure),
                    percentile: Some(number(&pct[1..])?),
                    max_ms: Some(number(v)? * factor),
                    connection_class: class,
                    ..Objective::default()
                })
            }
            [figure, pct, ">=", v, unit] if pct.starts_with('p') => {
                let factor = match *unit {
                    "kbit/s" | "kbps" => 1.0,
                    "mbit/s" | "mbps" => 1_000.0,
                    "gbit/s" | "gbps" => 1_000_000.0,
                    _ => return Err(bad()),
                };
                Ok(Objective {
                    figure: Some(figure.parse().map_err(|_| bad())?),
                    percentile: Some(number(&pct[1..])?),
                    min_kbps: Some(number(v)? * factor),
                    connection_class: class,
                    ..Objective::default()
                })
            }
            _ => Err(bad()),
        }
    }

    /// The written form [`Objective::parse_line`] reads.
    pub fn to_line(&self) -> String {
        let base = match (
            self.latency_figure(),
            self.percentile,
            self.max_ms,
            self.availability_min,
        ) {
            (Some(latency), Some(p), Some(ms), _) => format!("{latency} p{p} <= {ms} ms"),
            (_, _, _, Some(a)) => format!("availability >= {a} %"),
            _ if self.is_share() => match (self.figure, self.percentile, self.max_percent) {
                (Some(figure), Some(p), Some(max)) => format!("{figure} p{p} <= {max} %"),
                _ => String::new(),
            },
            _ => match (self.figure, self.percentile, self.min_kbps) {
                (Some(figure), Some(p), Some(kbps)) if kbps >= 1_000.0 => {
                    format!("{figure} p{p} >= {} Mbit/s", kbps / 1_000.0)
                }
                (Some(figure), Some(p), Some(kbps)) => format!("{figure} p{p} >= {kbps} kbit/s"),
                _ => String::new(),
            },
        };
        match self.connection_class {
            Some(c) => format!("{base} for {c}"),
            None => base,
        }
    }
}

/// The most objectives one check may carry.
pub const MAX_OBJECTIVES: usize = 32;

/// Checks every objective; the error names the offending one and field.
pub fn validate(objectives: &[Objective]) -> Result<()> {
    if objectives.len() > MAX_OBJECTIVES {
        return Err(Error::invalid(
            "invalid_objective",
            format!("at most {MAX_OBJECTIVES} objectives per check"),
        ));
    }
    for (i, o) in objectives.iter().enumerate() {
        let bad = |field: &str, why: &str| {
            Err(Error::invalid(
                "invalid_objective",
                format!("objectives[{i}].{field} {why}"),
            ))
        };
        let share = o.max_percent.is_some() || o.figure.is_some_and(|f| f.unit() == Unit::Ppm);
        if share {
            if o.phase.is_some()
                || o.max_ms.is_some()
                || o.min_kbps.is_some()
                || o.availability_min.is_some()
            {
                return bad(
                    "figure",
                    "cannot be combined with phase, max_ms, min_kbps or availability_min; give them as separate objectives",
                );
            }
            match o.figure {
                None => return bad("figure", "is required with max_percent"),
                Some(f) if f.unit() != Unit::Ppm => {
                    return bad(
                        "figure",
                        &format!("{f} is not a share: bound it with \"max_ms\" or \"min_kbps\", not max_percent"),
                    )
                }
                Some(_) => {}
            }
            if let Some(why) = percentile_fault(o.percentile) {
                return bad("percentile", why);
            }
            match o.max_percent {
                None => {
                    return bad(
                        "max_percent",
                        "is required with a share figure (loss p95 <= 1 % is {\"figure\": \"loss\", \"percentile\": 95, \"max_percent\": 1})",
                    )
                }
                Some(m) if !(m > 0.0 && m <= 100.0) => {
                    return bad("max_percent", "must be above 0 and at most 100")
                }
                Some(_) => {}
            }
            continue;
        }
        let rate = o.min_kbps.is_some() || o.figure.is_some_and(|f| f.unit() == Unit::Kbps);
        if rate {
            if o.phase.is_some() || o.max_ms.is_some() || o.availability_min.is_some() {
                return bad(
                    "figure",
                    "cannot be combined with phase, max_ms or availability_min; give them as separate objectives",
                );
            }
            match o.figure {
                None => return bad("figure", "is required with min_kbps"),
                Some(f) if f.phase().is_some() => {
                    return bad(
                        "figure",
                        &format!("{f} is a phase: bound it with \"phase\" and \"max_ms\""),
                    )
                }
                Some(f) if f.unit() != Unit::Kbps => {
                    return bad(
                        "figure",
                        &format!("{f} is a latency: bound it with \"max_ms\", not min_kbps"),
                    )
                }
                Some(_) => {}
            }
            if let Some(why) = percentile_fault(o.percentile) {
                return bad("percentile", why);
            }
            let ceiling = MAX_US as f64;
            match o.min_kbps {
                None => return bad("min_kbps", "is required with figure"),
                Some(m) if !(m > 0.0 && m <= ceiling) => {
                    return bad(
                        "min_kbps",
                        &format!("must be above 0 and at most {ceiling}"),
                    )
                }
                Some(_) => {}
            }
            continue;
        }
        // A latency bound names the phase, or the latency figure that is not one.
        let bounded = match (o.phase, o.figure) {
            (Some(_), Some(_)) => {
                return bad(
                    "figure",
                    "cannot be combined with phase; a latency objective bounds one of them",
                )
            }
            (None, Some(f)) if f.phase().is_some() => {
                return bad(
                    "figure",
                    &format!("{f} is a phase: bound it with \"phase\" and \"max_ms\""),
                )
            }
            (phase, figure) => phase.map(Figure::from).or(figure),
        };
        match (o.availability_min, bounded, o.percentile, o.max_ms) {
            (Some(a), None, None, None) => {
                if !(a > 0.0 && a < 100.0) {
                    return bad(
                        "availability_min",
                        "must be a percentage above 0 and below 100",
                    );
                }
            }
            (Some(_), ..) => return bad(
                "availability_min",
                "cannot be combined with phase/figure/percentile/max_ms; give them as separate objectives",
            ),
            (None, bounded, percentile, max_ms) => {
                if bounded.is_none() {
                    return bad(
                        "phase",
                        "is required (or a latency figure with max_ms, a rate figure with min_kbps, or availability_min)",
                    );
                }
                match percentile {
                    None => return bad("percentile", "is required with phase"),
                    Some(p) if !(p > 0.0 && p < 100.0) => {
                        return bad("percentile", "must be above 0 and below 100")
                    }
                    Some(_) => {}
                }
                let max_ceiling = (MAX_US / 1000) as f64;
                match max_ms {
                    None => return bad("max_ms", "is required with phase"),
                    Some(m) if !(m > 0.0 && m <= max_ceiling) => {
                        return bad(
                            "max_ms",
                            &format!("must be above 0 and at most {max_ceiling}"),
                        )
                    }
                    Some(_) => {}
                }
            }
        }
    }
    Ok(())
}

/// Why a figure objective's percentile is not one it can hold (`None`: it can).
fn percentile_fault(percentile: Option<f64>) -> Option<&'static str> {
    match percentile {
        None => Some("is required with figure"),
        Some(p) if !(p > 0.0 && p < 100.0) => Some("must be above 0 and below 100"),
        Some(_) => None,
    }
}

/// How one report row fares against one objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ObjectiveOutcome {
    pub objective: Objective,
    /// Met (true), breached (false), or no data (null).
    pub met: Option<bool>,
    /// pNN in ms (latency) or kbit/s (rate), or availability in percent.
    pub actual: Option<f64>,
    /// Interval of `actual` at the report's confidence.
    pub actual_ci: Option<[f64; 2]>,
    /// Whether the whole interval lies on the verdict's side of the limit.
    pub conclusive: Option<bool>,
    /// Distance from the limit, positive on the good side (ms, or percentage points).
    pub margin: Option<f64>,
    /// Samples over the latency bound, or failures.
    pub bad_samples: u64,
    /// How many the objective allows over the row's samples.
    pub allowed_bad_samples: f64,
    /// `1 - bad_samples / allowed_bad_samples` (see the module doc).
    pub error_budget_remaining: Option<f64>,
}

/// The data of one report row an objective is judged on.
pub struct RowData<'a> {
    pub connection_class: Option<ConnectionClass>,
    pub successes: u64,
    pub failures: u64,
    pub phase: &'a dyn Fn(Phase) -> Option<&'a Histogram<u64>>,
    /// The row's histograms of figures other than phases.
    pub figure: &'a dyn Fn(Figure) -> Option<&'a Histogram<u64>>,
}

/// The outcomes of the objectives that apply to a row.
pub fn evaluate(
    objectives: &[Objective],
    row: &RowData<'_>,
    confidence: Confidence,
) -> Vec<ObjectiveOutcome> {
    objectives
        .iter()
        .filter(|o| o.connection_class.is_none() || o.connection_class == row.connection_class)
        .map(|o| evaluate_one(o, row, confidence))
        .collect()
}

fn evaluate_one(o: &Objective, row: &RowData<'_>, confidence: Confidence) -> ObjectiveOutcome {
    let budget = |bad: u64, allowed: f64| {
        if allowed > 0.0 {
            Some(1.0 - bad as f64 / allowed)
        } else {
            None
        }
    };
    let conclusive =
        |ci: Option<[f64; 2]>, good: &dyn Fn(f64) -> bool| ci.map(|[lo, hi]| good(lo) == good(hi));
    if let Some(min) = o.availability_min {
        let n = row.successes + row.failures;
        let allowed = (1.0 - min / 100.0) * n as f64;
        if n == 0 {
            return empty(o, allowed);
        }
        let actual = row.successes as f64 / n as f64 * 100.0;
        let ci = confidence::proportion_interval(row.successes, n, confidence)
            .map(|[lo, hi]| [lo * 100.0, hi * 100.0]);
        return ObjectiveOutcome {
            objective: o.clone(),
            met: Some(actual >= min),
            actual: Some(actual),
            actual_ci: ci,
            conclusive: conclusive(ci, &|v| v >= min),
            margin: Some(actual - min),
            bad_samples: row.failures,
            allowed_bad_samples: allowed,
            error_budget_remaining: budget(row.failures, allowed),
        };
    }
    if let (Some(figure), Some(pct), Some(min)) = (o.figure, o.percentile, o.min_kbps) {
        let q = pct / 100.0;
        let Some(h) = (row.figure)(figure).filter(|h| !h.is_empty()) else {
            return empty(o, 0.0);
        };
        let limit = min.round() as u64;
        let allowed = q * h.len() as f64;
        let bad: u64 = h
            .iter_recorded()
            .filter(|v| h.lowest_equivalent(v.value_iterated_to()) < limit)
            .map(|v| v.count_at_value())
            .sum();
        let actual = h.value_at_quantile(q);
        let ci =
            confidence::quantile_interval(h, q, confidence).map(|[lo, hi]| [lo as f64, hi as f64]);
        return ObjectiveOutcome {
            objective: o.clone(),
            met: Some(actual >= limit),
            actual: Some(actual as f64),
            actual_ci: ci,
            conclusive: conclusive(ci, &|v| v >= min),
            margin: Some(actual as f64 - min),
            bad_samples: bad,
            allowed_bad_samples: allowed,
            error_budget_remaining: budget(bad, allowed),
        };
    }
    if let (Some(figure), Some(pct), Some(max)) = (o.figure, o.percentile, o.max_percent) {
        // Kept in parts per million, read in percent.
        return ceiling(o, (row.figure)(figure), pct, max, 10_000.0, confidence);
    }
    let (Some(bounded), Some(pct), Some(max_ms)) = (o.latency_figure(), o.percentile, o.max_ms)
    else {
        return empty(o, 0.0);
    };
    let h = match bounded.phase() {
        Some(phase) => (row.phase)(phase),
        None => (row.figure)(bounded),
    };
    // Kept in µs, read in ms.
    ceiling(o, h, pct, max_ms, 1000.0, confidence)
}

/// An objective that bounds a histogram's pNN from above: `max` in the unit people read
/// (ms, %), `per` values kept per one of it.
fn ceiling(
    o: &Objective,
    h: Option<&Histogram<u64>>,
    pct: f64,
    max: f64,
    per: f64,
    confidence: Confidence,
) -> ObjectiveOutcome {
    let budget = |bad: u64, allowed: f64| {
        if allowed > 0.0 {
            Some(1.0 - bad as f64 / allowed)
        } else {
            None
        }
    };
    let q = pct / 100.0;
    let Some(h) = h.filter(|h| !h.is_empty()) else {
        return empty(o, 0.0);
    };
    let n = h.len();
    let limit = (max * per).round() as u64;
    let allowed = (1.0 - q) * n as f64;
    let bad: u64 = h
        .iter_recorded()
        .filter(|v| v.value_iterated_to() > limit)
        .map(|v| v.count_at_value())
        .sum();
    let kept = h.value_at_quantile(q);
    let actual = kept as f64 / per;
    let ci = confidence::quantile_interval(h, q, confidence)
        .map(|[lo, hi]| [lo as f64 / per, hi as f64 / per]);
    ObjectiveOutcome {
        objective: o.clone(),
        met: Some(kept <= limit),
        actual: Some(actual),
        actual_ci: ci,
        conclusive: ci.map(|[lo, hi]| (lo <= max) == (hi <= max)),
        margin: Some(max - actual),
        bad_samples: bad,
        allowed_bad_samples: allowed,
        error_budget_remaining: budget(bad, allowed),
    }
}

fn empty(o: &Objective, allowed: f64) -> ObjectiveOutcome {
    ObjectiveOutcome {
        objective: o.clone(),
        met: None,
        actual: None,
        actual_ci: None,
        conclusive: None,
        margin: None,
        bad_samples: 0,
        allowed_bad_samples: allowed,
        error_budget_remaining: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram;

    fn latency(phase: Phase, pct: f64, max_ms: f64) -> Objective {
        Objective {
            phase: Some(phase),
            percentile: Some(pct),
            max_ms: Some(max_ms),
            ..Objective::default()
        }
    }

    #[test]
    fn validation_names_the_bad_field() {
        let mut o = latency(Phase::Ttfb, 95.0, 800.0);
        assert!(validate(std::slice::from_ref(&o)).is_ok());
        o.max_ms = Some(-1.0);
        let e = validate(&[latency(Phase::Ttfb, 95.0, 800.0), o]).unwrap_err();
        assert!(e.to_string().contains("objectives[1].max_ms"), "{e}");
        let e = validate(&[latency(Phase::Ttfb, 100.0, 800.0)]).unwrap_err();
        assert!(e.to_string().contains("objectives[0].percentile"), "{e}");
        let avail = Objective {
            availability_min: Some(100.5),
            ..Objective::default()
        };
        let e = validate(&[avail]).unwrap_err();
        assert!(e.to_string().contains("availability_min"), "{e}");
    }

    #[test]
    fn error_budget_counts_samples_over_the_bound() {
        // 1000 samples of 1..=1000 µs (exact in the histogram); p95 <= 0.990 ms allows
        // 50 over, 10 are over.
        let mut h = histogram::new_histogram();
        for us in 1..=1000u64 {
            h.record(us).unwrap();
        }
        let get = |_p: Phase| Some(&h);
        let row = RowData {
            connection_class: None,
            successes: 1000,
            failures: 0,
            phase: &get,
            figure: &|_| None,
        };
        let out = evaluate(&[latency(Phase::Ttfb, 95.0, 0.990)], &row, Confidence::P95);
        let o = &out[0];
        assert_eq!(o.met, Some(true));
        assert_eq!(o.bad_samples, 10);
        assert!((o.allowed_bad_samples - 50.0).abs() < 1e-9);
        assert!((o.error_budget_remaining.unwrap() - 0.8).abs() < 1e-9);
        // p95 <= 0.9 ms: 100 over, twice the allowance.
        let out = evaluate(&[latency(Phase::Ttfb, 95.0, 0.9)], &row, Confidence::P95);
        assert_eq!(out[0].met, Some(false));
        assert!((out[0].error_budget_remaining.unwrap() + 1.0).abs() < 1e-9);
        assert!(out[0].margin.unwrap() < -0.049);
        assert_eq!(out[0].conclusive, Some(true));
    }

    #[test]
    fn objectives_read_and_write_as_people_say_them() {
        let o = Objective::parse_line("TTFB p95 <= 800 ms").unwrap();
        assert_eq!(
            (o.phase, o.percentile, o.max_ms),
            (Some(Phase::Ttfb), Some(95.0), Some(800.0))
        );
        let o = Objective::parse_line("total p99 <= 3 s for dsl").unwrap();
        assert_eq!(o.max_ms, Some(3000.0));
        assert_eq!(o.connection_class, Some(ConnectionClass::Dsl));
        let o = Objective::parse_line("availability >= 99.5%").unwrap();
        assert_eq!(o.availability_min, Some(99.5));
        assert_eq!(o.to_line(), "availability >= 99.5 %");
        assert_eq!(
            Objective::parse_line("total p99 <= 3 s for dsl")
                .unwrap()
                .to_line(),
            "total p99 <= 3000 ms for dsl"
        );
        let err = Objective::parse_line("fast please")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ttfb p95 <= 800 ms"), "{err}");
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;
    use crate::histogram;

    fn goodput(pct: f64, min_kbps: f64) -> Objective {
        Objective {
            figure: Some(Figure::Goodput),
            percentile: Some(pct),
            min_kbps: Some(min_kbps),
            ..Objective::default()
        }
    }

    #[test]
    fn a_rate_floor_counts_the_samples_below_it() {
        // 1000 samples of 1..=1000 kbit/s (exact in the histogram).
        let mut h = histogram::new_histogram();
        for kbps in 1..=1000u64 {
            h.record(kbps).unwrap();
        }
        let none = |_p: Phase| None;
        let get = |_f: Figure| Some(&h);
        let row = RowData {
            connection_class: None,
            successes: 1000,
            failures: 0,
            phase: &none,
            figure: &get,
        };
        // p10 >= 91 kbit/s: 100 allowed below, 90 are; p10 is 100.
        let out = evaluate(&[goodput(10.0, 91.0)], &row, Confidence::P95);
        let o = &out[0];
        assert_eq!(o.met, Some(true));
        assert_eq!(o.actual, Some(100.0));
        assert_eq!(o.bad_samples, 90);
        assert!((o.allowed_bad_samples - 100.0).abs() < 1e-9);
        assert!((o.error_budget_remaining.unwrap() - 0.1).abs() < 1e-9);
        // p10 >= 200 kbit/s: 199 below, about twice the allowance; conclusively.
        let out = evaluate(&[goodput(10.0, 200.0)], &row, Confidence::P95);
        assert_eq!(out[0].met, Some(false));
        assert_eq!(out[0].bad_samples, 199);
        assert_eq!(out[0].conclusive, Some(true));
        assert!((out[0].margin.unwrap() + 100.0).abs() < 1e-9);
        // A row without goodput has no verdict.
        let row = RowData {
            figure: &|_| None,
            ..row
        };
        assert_eq!(
            evaluate(&[goodput(10.0, 91.0)], &row, Confidence::P95)[0].met,
            None
        );
    }

    fn loss(pct: f64, max_percent: f64) -> Objective {
        Objective {
            figure: Some(Figure::Loss),
            percentile: Some(pct),
            max_percent: Some(max_percent),
            ..Objective::default()
        }
    }

    #[test]
    fn a_share_ceiling_is_kept_in_ppm_and_read_in_percent() {
        // 100 streams that lost 0 %, 0.1 %, ..., 9.9 % of their packets.
        let mut h = histogram::new_histogram();
        for i in 0..100u64 {
            h.record(i * 1_000).unwrap();
        }
        let none = |_p: Phase| None;
        let get = |_f: Figure| Some(&h);
        let row = RowData {
            connection_class: None,
            successes: 100,
            failures: 0,
            phase: &none,
            figure: &get,
        };
        // loss p90 <= 9.45 %: 5 streams above it, 10 allowed; p90 reads 8.9 %.
        let out = evaluate(&[loss(90.0, 9.45)], &row, Confidence::P95);
        let o = &out[0];
        assert_eq!(o.met, Some(true), "{o:?}");
        assert!((o.actual.unwrap() - 8.9).abs() < 0.05, "{o:?}");
        assert_eq!(o.bad_samples, 5);
        // loss p50 <= 1 %: half the streams lost more.
        let out = evaluate(&[loss(50.0, 1.0)], &row, Confidence::P95);
        assert_eq!(out[0].met, Some(false));
        assert!(out[0].margin.unwrap() < -3.0, "{:?}", out[0]);
    }

    #[test]
    fn share_objectives_read_write_and_validate_as_people_say_them() {
        let o = Objective::parse_line("loss p95 <= 1 % for mobile").unwrap();
        assert_eq!(
            (o.figure, o.percentile, o.max_percent, o.connection_class),
            (
                Some(Figure::Loss),
                Some(95.0),
                Some(1.0),
                Some(ConnectionClass::Mobile)
            )
        );
        assert_eq!(o.to_line(), "loss p95 <= 1 % for mobile");
        assert_eq!(
            Objective::parse_line("loss p50 <= 0.5%").unwrap().to_line(),
            "loss p50 <= 0.5 %"
        );
        assert!(validate(&[loss(95.0, 1.0)]).is_ok());
        let err = |o: Objective| validate(&[o]).unwrap_err().to_string();
        assert!(err(loss(95.0, 0.0)).contains("objectives[0].max_percent"));
        assert!(err(loss(95.0, 101.0)).contains("objectives[0].max_percent"));
        assert!(err(loss(100.0, 1.0)).contains("objectives[0].percentile"));
        let in_ms = Objective {
            max_percent: None,
            max_ms: Some(1.0),
            ..loss(95.0, 1.0)
        };
        assert!(err(in_ms).contains("cannot be combined"));
        let rtt_in_percent = Objective {
            figure: Some(Figure::Rtt),
            ..loss(95.0, 1.0)
        };
        assert!(err(rtt_in_percent).contains("rtt is not a share"));
        // Round trip and jitter are latencies: bounded in ms.
        let rtt = Objective::parse_line("rtt p95 <= 80 ms").unwrap();
        assert_eq!(rtt.latency_figure(), Some(Figure::Rtt));
        assert!(validate(&[rtt]).is_ok());
    }

    #[test]
    fn rate_objectives_read_write_and_validate_as_people_say_them() {
        let o = Objective::parse_line("Goodput p10 >= 10 Mbit/s for cable").unwrap();
        assert_eq!(
            (o.figure, o.percentile, o.min_kbps, o.connection_class),
            (
                Some(Figure::Goodput),
                Some(10.0),
                Some(10_000.0),
                Some(ConnectionClass::Cable)
            )
        );
        assert_eq!(o.to_line(), "goodput p10 >= 10 Mbit/s for cable");
        assert_eq!(
            Objective::parse_line("goodput p5 >= 512 kbit/s")
                .unwrap()
                .to_line(),
            "goodput p5 >= 512 kbit/s"
        );
        assert!(Objective::parse_line("goodput p10 >= 10 parsecs").is_err());
        assert!(validate(&[goodput(10.0, 10_000.0)]).is_ok());
        let err = |o: Objective| validate(&[o]).unwrap_err().to_string();
        assert!(err(goodput(0.0, 10.0)).contains("objectives[0].percentile"));
        assert!(err(goodput(10.0, -1.0)).contains("objectives[0].min_kbps"));
        let phase_as_figure = Objective {
            figure: Some(Figure::Ttfb),
            ..goodput(10.0, 10.0)
        };
        assert!(err(phase_as_figure).contains("ttfb is a phase"));
        let mixed = Objective {
            max_ms: Some(100.0),
            ..goodput(10.0, 10.0)
        };
        assert!(err(mixed).contains("cannot be combined"));
        let no_floor = Objective {
            min_kbps: None,
            ..goodput(10.0, 10.0)
        };
        assert!(err(no_floor).contains("min_kbps"));
    }

    #[test]
    fn a_latency_figure_is_bounded_like_a_phase() {
        let o = Objective::parse_line("loaded_latency p95 <= 300 ms for dsl").unwrap();
        assert_eq!(
            (
                o.phase,
                o.figure,
                o.percentile,
                o.max_ms,
                o.connection_class
            ),
            (
                None,
                Some(Figure::LoadedLatency),
                Some(95.0),
                Some(300.0),
                Some(ConnectionClass::Dsl)
            )
        );
        assert_eq!(o.to_line(), "loaded_latency p95 <= 300 ms for dsl");
        assert!(validate(std::slice::from_ref(&o)).is_ok());
        // A phase written by name is still a phase objective.
        let ttfb = Objective::parse_line("ttfb p95 <= 800 ms").unwrap();
        assert_eq!((ttfb.phase, ttfb.figure), (Some(Phase::Ttfb), None));
        // Judged on the row's histogram of that figure: 1..=1000 ms, p95 is 950 ms.
        let mut h = histogram::new_histogram();
        for ms in 1..=1000u64 {
            h.record(ms * 1000).unwrap();
        }
        let none = |_p: Phase| None;
        let get = |f: Figure| (f == Figure::LoadedLatency).then_some(&h);
        let row = RowData {
            connection_class: Some(ConnectionClass::Dsl),
            successes: 1000,
            failures: 0,
            phase: &none,
            figure: &get,
        };
        let out = evaluate(std::slice::from_ref(&o), &row, Confidence::P95);
        assert_eq!(out[0].met, Some(false));
        assert!(
            (out[0].actual.unwrap() - 950.0).abs() < 1.0,
            "{:?}",
            out[0].actual
        );
        // 700 above 300 ms, and 300 ms itself, whose bucket reaches past the bound.
        assert!((700..=701).contains(&out[0].bad_samples), "{:?}", out[0]);
        let loose = Objective {
            max_ms: Some(990.0),
            ..o.clone()
        };
        assert_eq!(evaluate(&[loose], &row, Confidence::P95)[0].met, Some(true));
        // Mistakes are named: a latency with a floor, a latency and a phase at once.
        let err = |o: Objective| validate(&[o]).unwrap_err().to_string();
        let floor = Objective {
            max_ms: None,
            min_kbps: Some(10.0),
            ..o.clone()
        };
        assert!(err(floor).contains("loaded_latency is a latency"));
        let both = Objective {
            phase: Some(Phase::Ttfb),
            ..o
        };
        assert!(err(both).contains("cannot be combined with phase"));
    }
}
