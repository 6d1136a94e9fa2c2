//! Lastmile dashboard: the pages site owners and volunteers work in, rendered on the
//! server with `maud` (templates checked by the compiler, HTML-escaped by default) and
//! one embedded stylesheet. Nothing is loaded from the internet and every page works
//! without JavaScript.
//!
//! **Architecture Invariant:** this crate only renders. It takes plain view structs and
//! returns markup; it has no database, no HTTP and no rules. The controller's `web`
//! module authenticates, calls the same domain functions as the JSON API, and hands the
//! results here.

pub mod alerts;
pub mod auth;
pub mod charts;
pub mod checks;
pub mod layout;
pub mod leaderboard;
pub mod reports;
pub mod runs;
pub mod sites;
pub mod tokens;
pub mod volunteers;

pub use layout::{Nav, Role};

/// The stylesheet served at [`STYLESHEET_PATH`], compiled into the binary.
pub const STYLESHEET: &str = include_str!("style.css");

/// Where the controller serves [`STYLESHEET`].
pub const STYLESHEET_PATH: &str = "/app/static/style.css";

/// The one progressive script (live count of eligible agents on the check form), served
/// at `/app/static/eligible.js`. Pages work without it.
pub const ELIGIBLE_JS: &str = include_str!("eligible.js");
