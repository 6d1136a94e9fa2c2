//! Counters for `/metrics` (Prometheus text format).
//!
//! Event counters live in memory per process (a Prometheus server sums replicas);
//! gauges that describe shared state (agents online, assignments waiting) are read from
//! the database at scrape time so every replica reports the same truth.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Process-local event counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub results_accepted: AtomicU64,
    pub results_late: AtomicU64,
    pub results_duplicate: AtomicU64,
    pub results_flagged: AtomicU64,
    pub results_folded: AtomicU64,
    pub results_unpaid: AtomicU64,
    pub results_missing: AtomicU64,
    /// Agents' requests written by the acceptor, and the transactions they took.
    pub result_requests: AtomicU64,
    pub result_batches: AtomicU64,
    pub assignments_leased: AtomicU64,
    pub runs_created: AtomicU64,
    pub leases_expired: AtomicU64,
    pub http_errors_4xx: AtomicU64,
    pub http_errors_5xx: AtomicU64,
    /// Requests the agent listener answered (`agent_listener`), and its connections open.
    pub agent_listener_requests: AtomicU64,
    pub agent_listener_connections: AtomicU64,
}

/// Gauges read from the database at scrape time.
#[derive(Debug, Default)]
pub struct Gauges {
    pub agents_online: i64,
    pub assignments_pending: i64,
    pub assignments_leased: i64,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Renders every metric in the Prometheus text exposition format.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let counters = [
            (
                "lastmile_results_accepted_total",
                "Results accepted (stored and queued to be aggregated and paid).",
                &self.results_accepted,
            ),
            (
                "lastmile_results_late_total",
                "Results stored as late (lease had expired).",
                &self.results_late,
            ),
            (
                "lastmile_results_duplicate_total",
                "Repeated submissions answered idempotently.",
                &self.results_duplicate,
            ),
            (
                "lastmile_results_flagged_total",
                "Results flagged by verification (stored, not counted, not paid).",
                &self.results_flagged,
            ),
            (
                "lastmile_results_folded_total",
                "Accepted results folded into aggregates and paid, in batches.",
                &self.results_folded,
            ),
            (
                "lastmile_results_unpaid_total",
                "Folded results the owner's credit no longer covered (stored, counted, not paid).",
                &self.results_unpaid,
            ),
            (
                "lastmile_results_missing_total",
                "Queued results whose stored row was gone when folded (never expected: deleted behind the queue); not folded, not paid.",
                &self.results_missing,
            ),
            (
                "lastmile_result_requests_total",
                "Agents' result requests written (group commit).",
                &self.result_requests,
            ),
            (
                "lastmile_result_batches_total",
                "Transactions the result requests were written in: requests / batches is the mean batch.",
                &self.result_batches,
            ),
            (
                "lastmile_assignments_leased_total",
                "Assignments leased to agents.",
                &self.assignments_leased,
            ),
            (
                "lastmile_runs_created_total",
                "Runs created.",
                &self.runs_created,
            ),
            (
                "lastmile_leases_expired_total",
                "Leases that ran out.",
                &self.leases_expired,
            ),
            (
                "lastmile_http_client_errors_total",
                "API answers with a 4xx status.",
                &self.http_errors_4xx,
            ),
            (
                "lastmile_http_server_errors_total",
                "API answers with a 5xx status.",
                &self.http_errors_5xx,
            ),
            (
                "lastmile_agent_listener_requests_total",
                "Requests the agent listener answered (agents' hot calls off the API's address).",
                &self.agent_listener_requests,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let connections = self.agent_listener_connections.load(Ordering::Relaxed) as i64;
        let gauges = [
            (
                "lastmile_agent_listener_connections",
                "Connections open on the agent listener (this replica).",
                connections,
            ),
            (
                "lastmile_agents_online",
                "Agents that heartbeat within the online window.",
                gauges.agents_online,
            ),
            (
                "lastmile_assignments_pending",
                "Assignments waiting for an agent.",
                gauges.assignments_pending,
            ),
            (
                "lastmile_assignments_leased",
                "Assignments being measured now.",
                gauges.assignments_leased,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}
