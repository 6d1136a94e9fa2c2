//! How every Lastmile binary logs: to stderr, filtered by `RUST_LOG` (or the binary's
//! own default level), as text or as one JSON object per line.
//!
//! The controller, the probe agent and the demo share nothing else at run time, which is
//! why these few lines are a crate of their own rather than a copy in each `cli.rs`.

use std::io::IsTerminal;

/// How a process writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines; ANSI colours only when stderr is a terminal, so a log
    /// redirected to a file or a journal holds no escape codes.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl Format {
    /// `Json` when the binary's `--log-json` flag is set.
    pub fn json_if(flag: bool) -> Self {
        if flag {
            Format::Json
        } else {
            Format::Text
        }
    }
}

/// Installs the process-wide subscriber. `default_level` (e.g. `"info"`) applies when
/// `RUST_LOG` is unset or does not parse.
pub fn init(default_level: &str, format: Format) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_level.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        Format::Json => logs.json().init(),
        Format::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
