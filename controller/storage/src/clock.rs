//! Time as the database keeps it: integer microseconds since the Unix epoch (portable
//! across both backends), converted to RFC 3339 UTC only at the edges.

use chrono::{DateTime, TimeZone, Utc};

/// Microseconds since the Unix epoch.
pub type Micros = i64;

/// One hour, the aggregation bucket width.
pub const HOUR_US: Micros = 3_600_000_000;

/// Now, in microseconds since the epoch.
pub fn now_us() -> Micros {
    Utc::now().timestamp_micros()
}

/// A wire timestamp as database microseconds.
pub fn to_us(t: DateTime<Utc>) -> Micros {
    t.timestamp_micros()
}

/// Database microseconds as a wire timestamp.
pub fn to_datetime(us: Micros) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

/// The start of the hour bucket that holds `us`.
pub fn hour_bucket(us: Micros) -> Micros {
    us.div_euclid(HOUR_US) * HOUR_US
}
