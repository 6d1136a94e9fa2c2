//! Calibration: how an agent's line is measured against the controller, so that the
//! controller classifies its connection instead of trusting the declared class.
//!
//! The agent makes a few tiny round trips (`ping`), then downloads and uploads
//! payloads of growing size until a transfer takes long enough to measure (or a byte
//! cap is reached), and reports that it is done. The controller times all of it on its
//! own clock (each answer's nonce echoed by the agent's next request, see
//! [`ECHO_HEADER`]), classifies the figures it timed with documented thresholds and
//! answers with the class it will use. The figures in the agent's report are its own
//! view, logged beside the controller's, and never used.

use serde::{Deserialize, Serialize};

use crate::ConnectionClass;

/// Response header carrying a calibration ping's nonce. A download's nonce is instead
/// the last [`NONCE_LEN`] bytes of its payload, so that echoing it needs the whole body.
pub const NONCE_HEADER: &str = "lastmile-calibration-nonce";
/// Request header in which the agent sends back the nonce of the previous calibration
/// answer, so that the controller times the round trip itself.
pub const ECHO_HEADER: &str = "lastmile-calibration-echo";
/// Characters of a nonce (16 random bytes, lower-case hex).
pub const NONCE_LEN: usize = 32;

/// Largest payload of one calibration download or upload, bytes.
pub const MAX_PAYLOAD_BYTES: u64 = 8 * 1024 * 1024;

/// Agent -> controller: what calibration measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CalibrationReport {
    /// Median round-trip time of the pings, microseconds.
    pub rtt_us: u64,
    /// Downstream throughput, bits per second.
    pub down_bps: u64,
    /// Upstream throughput, bits per second.
    pub up_bps: u64,
    /// Bytes this calibration moved (both directions), counted against the daily cap.
    pub bytes_used: u64,
}

/// Controller -> agent: the class the controller will select the agent by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CalibrationAck {
    pub declared_class: ConnectionClass,
    pub measured_class: ConnectionClass,
    /// True when the measured class contradicts the declared one (the agent is flagged).
    pub mismatch: bool,
}
