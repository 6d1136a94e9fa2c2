//! Calibration: classifying an agent's line from what it measured against the
//! controller, and keeping calibration traffic within a daily byte cap.
//!
//! **Architecture Invariant:** selection and reports use the *measured* class once an
//! agent has calibrated; the declared class is kept, and an agent whose measurement
//! contradicts it is flagged (`class_mismatch`).
//!
//! # How a line is classified
//!
//! A throughput measured against the controller is a *lower bound* on the line's
//! capacity (a distant controller or a busy path caps it), and an RTT is a lower bound
//! plus noise. Two lines with the same figures (a 16 Mbit/s DSL line and a 20 Mbit/s 4G
//! link) can be honestly indistinguishable. So the controller asks first whether the
//! measurement is *plausible for the declared class*, and keeps the declared class when it
//! is; only a measurement that the declared class cannot explain replaces it, and the
//! agent is then flagged.
//!
//! Plausible figures per class (down = downstream rate, rtt = median of five pings):
//!
//! | class     | plausible when                              | typical line          |
//! |-----------|---------------------------------------------|-----------------------|
//! | dialup    | down <= 150 kbit/s and rtt >= 60 ms         | V.90/V.92, 56 kbit/s  |
//! | dsl       | 150 kbit/s < down <= 150 Mbit/s, rtt < 450 ms | ADSL2+/VDSL, 16 Mbit/s |
//! | mobile    | 150 kbit/s < down, 15 ms <= rtt < 450 ms    | 4G, 20 Mbit/s, 60 ms  |
//! | cable     | 1 Mbit/s <= down, rtt < 450 ms              | DOCSIS 3.0, 100 Mbit/s |
//! | fibre     | 10 Mbit/s <= down, rtt < 450 ms             | GPON, 1 Gbit/s        |
//! | satellite | 150 kbit/s < down and rtt >= 25 ms          | GEO ~600 ms, LEO ~40 ms |
//!
//! A measurement the declared class cannot explain is classified by these thresholds,
//! checked in order:
//!
//! | class     | rule                                   |
//! |-----------|----------------------------------------|
//! | satellite | rtt >= 450 ms                          |
//! | dialup    | down < 200 kbit/s                      |
//! | mobile    | down < 60 Mbit/s and rtt >= 50 ms      |
//! | dsl       | down < 60 Mbit/s                       |
//! | cable     | down < 400 Mbit/s                      |
//! | fibre     | otherwise                              |

use diesel::prelude::*;
use lastmile_protocol::calibration::{CalibrationAck, CalibrationReport};
use lastmile_protocol::ConnectionClass;

use crate::agents::Agent;
use crate::clock::now_us;
use crate::error::{Error, Result};
use lastmile_storage::schema::agents;
use lastmile_storage::{write_tx, DbConn};

/// The class the controller uses for an agent that declared `declared` and measured
/// `report`: the declared class when the measurement is plausible for it, otherwise the
/// class the thresholds give (see the module's tables).
pub fn classify(declared: ConnectionClass, report: &CalibrationReport) -> ConnectionClass {
    if plausible(declared, report) {
        declared
    } else {
        by_thresholds(report)
    }
}

/// Whether a line of class `class` could have produced this measurement.
fn plausible(class: ConnectionClass, report: &CalibrationReport) -> bool {
    const KBIT: u64 = 1_000;
    const MBIT: u64 = 1_000_000;
    let rtt_ms = report.rtt_us / 1000;
    let down = report.down_bps;
    let terrestrial = rtt_ms < 450;
    match class {
        ConnectionClass::Dialup => down <= 150 * KBIT && rtt_ms >= 60,
        ConnectionClass::Dsl => down > 150 * KBIT && down <= 150 * MBIT && terrestrial,
        ConnectionClass::Mobile => down > 150 * KBIT && rtt_ms >= 15 && terrestrial,
        ConnectionClass::Cable => down >= MBIT && terrestrial,
        ConnectionClass::Fibre => down >= 10 * MBIT && terrestrial,
        ConnectionClass::Satellite => down > 150 * KBIT && rtt_ms >= 25,
    }
}

/// The class a line with these figures belongs to when nothing else is known.
fn by_thresholds(report: &CalibrationReport) -> ConnectionClass {
    let rtt_ms = report.rtt_us / 1000;
    let down = report.down_bps;
    if rtt_ms >= 450 {
        ConnectionClass::Satellite
    } else if down < 200_000 {
        ConnectionClass::Dialup
    } else if down < 60_000_000 && rtt_ms >= 50 {
        ConnectionClass::Mobile
    } else if down < 60_000_000 {
        ConnectionClass::Dsl
    } else if down < 400_000_000 {
        ConnectionClass::Cable
    } else {
        ConnectionClass::Fibre
    }
}

/// Stores a calibration and answers with the class the controller will use.
pub fn record(
    conn: &mut DbConn,
    agent: &Agent,
    report: &CalibrationReport,
) -> Result<CalibrationAck> {
    if report.down_bps == 0 || report.up_bps == 0 || report.rtt_us == 0 {
        return Err(Error::invalid(
            "invalid_calibration",
            "rtt_us, down_bps and up_bps must all be measured (non-zero)",
        ));
    }
    let declared: ConnectionClass = agent
        .declared_class
        .parse()
        .map_err(|e| Error::Internal(format!("stored class: {e}")))?;
    let measured = classify(declared, report);
    let mismatch = measured != declared;
    if mismatch {
        tracing::warn!(agent = %agent.id, %declared, %measured, "agent's measured class contradicts its declared class");
    }
    diesel::update(agents::table.find(&agent.id))
        .set((
            agents::measured_class.eq(measured.as_str()),
            agents::calibrated_at.eq(now_us()),
            agents::rtt_us.eq(clamp(report.rtt_us)),
            agents::down_bps.eq(clamp(report.down_bps)),
            agents::up_bps.eq(clamp(report.up_bps)),
            agents::class_mismatch.eq(mismatch),
            agents::changed_at.eq(now_us()),
        ))
        .execute(conn)?;
    Ok(CalibrationAck {
        declared_class: declared,
        measured_class: measured,
        mismatch,
    })
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Counts `bytes` of calibration traffic against the agent's daily cap; refuses (429)
/// when the cap would be passed. The day is the UTC day.
pub fn reserve_bytes(conn: &mut DbConn, agent_id: &str, bytes: u64, daily_cap: u64) -> Result<()> {
    let today = now_us().div_euclid(86_400_000_000);
    write_tx(conn, |c| {
        let (day, used): (i64, i64) = agents::table
            .find(agent_id)
            .select((agents::calibration_day, agents::calibration_bytes))
            .first(c)?;
        let used = if day == today { used.max(0) as u64 } else { 0 };
        if used.saturating_add(bytes) > daily_cap {
            return Err(Error::RateLimited {
                quota: format!(
                    "this agent's calibration allowance of {daily_cap} bytes per day ({used} used, {bytes} asked)"
                ),
                retry_after_s: seconds_to_next_day(),
            });
        }
        diesel::update(agents::table.find(agent_id))
            .set((
                agents::calibration_day.eq(today),
                agents::calibration_bytes.eq(clamp(used + bytes)),
            ))
            .execute(c)?;
        Ok(())
    })
}

fn seconds_to_next_day() -> u64 {
    let us = now_us();
    let next = (us.div_euclid(86_400_000_000) + 1) * 86_400_000_000;
    ((next - us) / 1_000_000).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(down_bps: u64, up_bps: u64, rtt_ms: u64) -> CalibrationReport {
        CalibrationReport {
            rtt_us: rtt_ms * 1000,
            down_bps,
            up_bps,
            bytes_used: 0,
        }
    }

    use ConnectionClass::*;

    /// The emulated links' figures (testbed::link::LinkProfile::for_class).
    const TYPICAL: [(ConnectionClass, u64, u64, u64); 6] = [
        (Dialup, 56_000, 33_600, 150),
        (Dsl, 16_000_000, 1_000_000, 40),
        (Mobile, 20_000_000, 5_000_000, 60),
        (Cable, 100_000_000, 10_000_000, 20),
        (Fibre, 1_000_000_000, 500_000_000, 4),
        (Satellite, 25_000_000, 3_000_000, 600),
    ];

    #[test]
    fn typical_lines_land_in_their_class_with_or_without_a_declaration() {
        for (class, down, up, rtt) in TYPICAL {
            let measured = report(down, up, rtt);
            assert_eq!(by_thresholds(&measured), class, "thresholds for {class}");
            assert_eq!(classify(class, &measured), class, "declared {class}");
        }
    }

    #[test]
    fn a_slow_or_busy_measurement_keeps_a_plausible_declared_class() {
        // Half the rate and 30 ms more latency: a loaded path, not a different line.
        for (class, down, up, rtt) in TYPICAL {
            let busy = report(down / 2, up / 2, rtt + 30);
            assert_eq!(classify(class, &busy), class, "declared {class}, busy path");
        }
    }

    #[test]
    fn a_measurement_the_declared_class_cannot_explain_replaces_it() {
        // Declared fibre, measures like a modem.
        assert_eq!(classify(Fibre, &report(50_000, 30_000, 160)), Dialup);
        // Declared dial-up, measures 100 Mbit/s.
        assert_eq!(
            classify(Dialup, &report(100_000_000, 10_000_000, 20)),
            Cable
        );
        // Declared DSL, measures half a gigabit.
        assert_eq!(classify(Dsl, &report(500_000_000, 100_000_000, 5)), Fibre);
        // Declared cable, with a geostationary round trip.
        assert_eq!(
            classify(Cable, &report(25_000_000, 3_000_000, 620)),
            Satellite
        );
        // Declared satellite, with a 5 ms round trip.
        assert_eq!(
            classify(Satellite, &report(900_000_000, 400_000_000, 5)),
            Fibre
        );
    }
}
