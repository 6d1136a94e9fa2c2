//! The Lastmile probe agent, as a library so that the demo and the end-to-end tests
//! can run real agents inside one process.
//!
//! Layout: [`measure`] is the measurement engine (one fetch, each phase timed),
//! [`guard`] decides which addresses may be fetched, [`spool`] keeps results until the
//! controller acknowledges them, [`client`] speaks the controller's agent API,
//! [`page`] loads a page with its sub-resources (found by [`discover`]) over a
//! browser's connections, [`throughput`] loads the line with several downloads at once
//! and times round trips before and during that load, [`video`] plays an HLS stream
//! or a DASH presentation (its MPD read by `dash`) against a player's buffer model
//! (start-up delay, stalls), both over the kept-alive
//! connections of [`connection`], and [`runner`] ties them into the enrol / heartbeat /
//! lease / measure / submit loop.
//! The binary in `main.rs` only parses flags and calls into these.

pub mod calibrate;
pub mod cli;
pub mod client;
pub mod connection;
mod dash;
pub mod discover;
pub mod guard;
pub mod limits;
pub mod measure;
pub mod page;
pub mod reflector;
pub mod runner;
pub mod spool;
pub mod throughput;
pub mod trace;
pub mod udp;
pub mod video;

pub use measure::{ConnectTo, Engine, EngineConfig, Expectations};
pub use runner::{run, AgentSettings};
