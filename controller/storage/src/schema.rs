//! The one schema both backends share (see `migrations/postgres` and `migrations/sqlite`).
//! Hand-written to stay in the portable subset: text ids, BIGINT microsecond times.
//!
//! The ledger's tables (`ledger_accounts`, `ledger_transactions`, `ledger_postings`,
//! migration `2026-11-25-000007_ledger`) belong to `lastmile-billing`, which declares
//! them; they are re-exported here so this file still names every table.

pub use lastmile_billing::store::{ledger_accounts, ledger_postings, ledger_transactions};

diesel::table! {
    owners (id) {
        id -> Text,
        name -> Text,
        token_hash -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    volunteers (id) {
        id -> Text,
        name -> Text,
        enrol_key_hash -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    agents (id) {
        id -> Text,
        volunteer_id -> Text,
        name -> Text,
        token_hash -> Text,
        declared_class -> Text,
        version -> Text,
        max_concurrent -> Integer,
        ip -> Text,
        country -> Nullable<Text>,
        region -> Nullable<Text>,
        city -> Nullable<Text>,
        asn -> Nullable<BigInt>,
        as_org -> Nullable<Text>,
        enrolled_at -> BigInt,
        last_heartbeat_at -> Nullable<BigInt>,
        measured_class -> Nullable<Text>,
        calibrated_at -> Nullable<BigInt>,
        rtt_us -> Nullable<BigInt>,
        down_bps -> Nullable<BigInt>,
        up_bps -> Nullable<BigInt>,
        class_mismatch -> Bool,
        calibration_day -> BigInt,
        calibration_bytes -> BigInt,
        paused_reason -> Nullable<Text>,
        check_kinds -> Text,
        changed_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
        path_trace -> Bool,
    }
}

diesel::table! {
    sites (id) {
        id -> Text,
        owner_id -> Text,
        origin -> Text,
        verification_token -> Text,
        verified_at -> Nullable<BigInt>,
        created_at -> BigInt,
        verified_by -> Nullable<Text>,
        /// When the owner deleted it (migration 000026); the row stays for history.
        deleted_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    checks (id) {
        id -> Text,
        owner_id -> Text,
        site_id -> Text,
        name -> Text,
        kind -> Text,
        url -> Text,
        expected_status -> Text,
        max_bytes -> BigInt,
        timeout_ms -> BigInt,
        countries -> Text,
        asns -> Text,
        connection_classes -> Text,
        agents_per_run -> Integer,
        interval_s -> Nullable<BigInt>,
        next_run_at -> Nullable<BigInt>,
        created_at -> BigInt,
        isp_sharing -> Bool,
        body_contains -> Nullable<Text>,
        objectives -> Text,
        max_redirects -> Integer,
        paused_at -> Nullable<BigInt>,
        spread -> Text,
        /// When the owner deleted it (migration 000026); the row stays for history.
        deleted_at -> Nullable<BigInt>,
        /// A throughput check's load as JSON (migration 000040); NULL for other kinds.
        throughput -> Nullable<Text>,
        /// A video check's session as JSON (migration 000041); NULL for other kinds.
        video -> Nullable<Text>,
        /// A udp check's stream as JSON (migration 000042); NULL for other kinds.
        udp -> Nullable<Text>,
        /// When the row last changed, stamped by a trigger on every insert and update
        /// (migration 000043), strictly increasing per row.
        changed_at -> BigInt,
    }
}

diesel::table! {
    check_agents (check_id, agent_id) {
        check_id -> Text,
        agent_id -> Text,
        last_run_at -> BigInt,
    }
}

diesel::table! {
    runs (id) {
        id -> Text,
        check_id -> Text,
        created_at -> BigInt,
        deadline_at -> BigInt,
        eligible_agents -> Integer,
        requested -> Integer,
        task -> Nullable<Text>,
        price_minor -> Nullable<BigInt>,
        price_currency -> Nullable<Text>,
        settled_at -> Nullable<BigInt>,
        settled_done -> Nullable<Integer>,
        settled_expired -> Nullable<Integer>,
        settled_flagged -> Nullable<Integer>,
        archived_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    run_agents (run_id, agent_id) {
        run_id -> Text,
        agent_id -> Text,
        /// The run's deadline: an agent's live plans are an index range (migration
        /// 000034).
        deadline_at -> BigInt,
    }
}

diesel::table! {
    assignments (id) {
        id -> Text,
        run_id -> Text,
        check_id -> Text,
        attempt -> Integer,
        state -> Text,
        agent_id -> Nullable<Text>,
        created_at -> BigInt,
        leased_at -> Nullable<BigInt>,
        lease_expires_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    /// The assignments still open (pending or leased), beside their rows in
    /// `assignments`, with the indexes of open work (migration 000047): so that closing
    /// an assignment changes no indexed column of `assignments`.
    open_assignments (assignment_id) {
        assignment_id -> Text,
        run_id -> Text,
        check_id -> Text,
        state -> Text,
        agent_id -> Nullable<Text>,
        created_at -> BigInt,
        lease_expires_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    results (assignment_id) {
        assignment_id -> Text,
        run_id -> Text,
        check_id -> Text,
        agent_id -> Text,
        received_at -> BigInt,
        started_at -> BigInt,
        late -> Bool,
        status -> Nullable<Integer>,
        bytes -> BigInt,
        error_kind -> Nullable<Text>,
        error_message -> Nullable<Text>,
        dns_us -> BigInt,
        connect_us -> BigInt,
        tls_us -> BigInt,
        ttfb_us -> BigInt,
        transfer_us -> BigInt,
        total_us -> BigInt,
        country -> Text,
        region -> Text,
        asn -> BigInt,
        connection_class -> Text,
        remote_addr -> Nullable<Text>,
        ip_version -> Nullable<Integer>,
        http_version -> Nullable<Text>,
        bytes_decoded -> BigInt,
        redirects -> Integer,
        redirect_us -> BigInt,
        page -> Nullable<Text>,
        flagged -> Bool,
        redirect_hops -> Nullable<Text>,
        /// Figures besides the phases, derived at ingest, as JSON (migration 000040).
        figures -> Nullable<Text>,
    }
}

diesel::table! {
    result_flags (assignment_id, rule) {
        assignment_id -> Text,
        rule -> Text,
        agent_id -> Text,
        volunteer_id -> Text,
        check_id -> Text,
        run_id -> Text,
        evidence -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    aggregates (check_id, bucket_start, country, region, asn, connection_class) {
        check_id -> Text,
        bucket_start -> BigInt,
        country -> Text,
        region -> Text,
        asn -> BigInt,
        connection_class -> Text,
        successes -> BigInt,
        failures -> BigInt,
        dns_hist -> Binary,
        connect_hist -> Binary,
        tls_hist -> Binary,
        ttfb_hist -> Binary,
        transfer_hist -> Binary,
        total_hist -> Binary,
        figures -> Nullable<Binary>,
    }
}

diesel::table! {
    rollup_cells (check_id, span_us, bucket_start, country, region, asn, connection_class) {
        check_id -> Text,
        span_us -> BigInt,
        bucket_start -> BigInt,
        country -> Text,
        region -> Text,
        asn -> BigInt,
        connection_class -> Text,
        successes -> BigInt,
        failures -> BigInt,
        dns_hist -> Binary,
        connect_hist -> Binary,
        tls_hist -> Binary,
        ttfb_hist -> Binary,
        transfer_hist -> Binary,
        total_hist -> Binary,
        figures -> Nullable<Binary>,
    }
}

diesel::table! {
    aggregate_rollups (check_id) {
        check_id -> Text,
        rolled_until -> BigInt,
        quarters_until -> BigInt,
    }
}

diesel::table! {
    isps (id) {
        id -> Text,
        name -> Text,
        token_hash -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    isp_asns (isp_id, asn) {
        isp_id -> Text,
        asn -> BigInt,
        proven_by -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    asn_contacts (asn) {
        asn -> BigInt,
        email -> Text,
    }
}

diesel::table! {
    asn_claims (id) {
        id -> Text,
        isp_id -> Text,
        asn -> BigInt,
        code_hash -> Text,
        sent_to -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
        attempts -> Integer,
        confirmed_at -> Nullable<BigInt>,
    }
}

diesel::joinable!(assignments -> checks (check_id));
diesel::joinable!(assignments -> runs (run_id));
diesel::joinable!(open_assignments -> runs (run_id));
diesel::joinable!(open_assignments -> assignments (assignment_id));
diesel::joinable!(checks -> sites (site_id));
diesel::joinable!(results -> assignments (assignment_id));
diesel::joinable!(result_flags -> agents (agent_id));

diesel::table! {
    logins (id) {
        id -> Text,
        email -> Text,
        password_hash -> Text,
        owner_id -> Nullable<Text>,
        volunteer_id -> Nullable<Text>,
        created_at -> BigInt,
    }
}

diesel::table! {
    sessions (token_hash) {
        token_hash -> Text,
        login_id -> Text,
        csrf_token -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
    }
}

diesel::joinable!(sessions -> logins (login_id));

diesel::table! {
    /// Each agent's counted results and measuring time per UTC day (migration 000024),
    /// added to when results are folded; the leaderboard and the agents page read it, so
    /// raw results can age out.
    agent_work_days (agent_id, day) {
        agent_id -> Text,
        day -> BigInt,
        results -> BigInt,
        measuring_us -> BigInt,
        last_at -> BigInt,
    }
}

diesel::table! {
    agent_uptime (agent_id, day) {
        agent_id -> Text,
        day -> BigInt,
        seconds -> BigInt,
    }
}

diesel::table! {
    /// Named owner API tokens (migration 000014); revoked ones stay, with `revoked_at`.
    api_tokens (id) {
        id -> Text,
        owner_id -> Text,
        name -> Text,
        token_hash -> Text,
        created_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    stripe_checkouts (id) {
        id -> Text,
        owner_id -> Text,
        amount_minor -> BigInt,
        currency -> Text,
        created_at -> BigInt,
        completed_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    stripe_events (id) {
        id -> Text,
        event_type -> Text,
        received_at -> BigInt,
    }
}

diesel::table! {
    stripe_accounts (volunteer_id) {
        volunteer_id -> Text,
        account_id -> Text,
        payouts_enabled -> Bool,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    payouts (id) {
        id -> Text,
        volunteer_id -> Text,
        account_id -> Text,
        amount_minor -> BigInt,
        currency -> Text,
        status -> Text,
        transfer_id -> Nullable<Text>,
        failure_reason -> Nullable<Text>,
        attempts -> Integer,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::joinable!(stripe_checkouts -> owners (owner_id));
diesel::joinable!(stripe_accounts -> volunteers (volunteer_id));
diesel::joinable!(payouts -> volunteers (volunteer_id));

diesel::table! {
    /// Results accepted and not yet folded into aggregates and paid, one entry per
    /// accepting transaction (see `lastmile_storage::fold_queue`). `runs` is JSON
    /// (PostgreSQL's `json`), written as text.
    fold_queue (first_assignment_id) {
        first_assignment_id -> Text,
        assignment_ids -> Text,
        runs -> Text,
        results -> Integer,
        queued_at -> BigInt,
    }
}

diesel::table! {
    /// The ledger transaction that paid for each counted result (see
    /// `lastmile_domain::billing::pay_for_results`).
    result_payments (assignment_id) {
        assignment_id -> Text,
        transaction_id -> Text,
        price_minor -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    fold_queue,
    result_payments,
    api_tokens,
    agent_uptime,
    stripe_checkouts,
    stripe_events,
    stripe_accounts,
    payouts,
    logins,
    sessions,
    owners,
    volunteers,
    agents,
    sites,
    checks,
    check_agents,
    runs,
    run_agents,
    assignments,
    open_assignments,
    results,
    result_flags,
    aggregates,
    rollup_cells,
    aggregate_rollups,
);

diesel::table! {
    /// Where an owner's alerts go (migration 000025).
    alert_channels (id) {
        id -> Text,
        owner_id -> Text,
        name -> Text,
        kind -> Text,
        target -> Text,
        secret -> Nullable<Text>,
        created_at -> BigInt,
        deleted_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    /// What breaks a check (migration 000025).
    alert_rules (id) {
        id -> Text,
        check_id -> Text,
        kind -> Text,
        threshold_percent -> Nullable<Double>,
        window_s -> BigInt,
        min_samples -> BigInt,
        created_at -> BigInt,
        deleted_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    /// Which channels a rule alerts (migration 000025).
    alert_rule_channels (rule_id, channel_id) {
        rule_id -> Text,
        channel_id -> Text,
    }
}

diesel::table! {
    /// A rule firing, from open to resolved (migration 000025).
    incidents (id) {
        id -> Text,
        check_id -> Text,
        rule_id -> Text,
        opened_at -> BigInt,
        updated_at -> BigInt,
        resolved_at -> Nullable<BigInt>,
        summary -> Text,
        resolution -> Nullable<Text>,
        fingerprint -> Text,
        details -> Text,
    }
}

diesel::table! {
    /// The alerts outbox: one row per (incident event, channel) (migration 000025).
    alert_deliveries (id) {
        id -> Text,
        incident_id -> Text,
        channel_id -> Text,
        event -> Text,
        body -> Text,
        created_at -> BigInt,
        attempts -> Integer,
        next_attempt_at -> Nullable<BigInt>,
        delivered_at -> Nullable<BigInt>,
        last_status -> Nullable<Integer>,
        last_error -> Nullable<Text>,
    }
}

diesel::table! {
    /// A path trace asked of an agent when an incident opened (migration 000027).
    path_traces (id) {
        id -> Text,
        incident_id -> Text,
        check_id -> Text,
        agent_id -> Text,
        url -> Text,
        state -> Text,
        created_at -> BigInt,
        leased_at -> Nullable<BigInt>,
        expires_at -> BigInt,
        finished_at -> Nullable<BigInt>,
        target_addr -> Nullable<Text>,
        reached -> Nullable<Bool>,
        hops -> Nullable<Text>,
        error_kind -> Nullable<Text>,
        error_message -> Nullable<Text>,
    }
}

diesel::joinable!(path_traces -> incidents (incident_id));
diesel::joinable!(path_traces -> agents (agent_id));
diesel::joinable!(alert_rule_channels -> alert_rules (rule_id));
diesel::joinable!(alert_rule_channels -> alert_channels (channel_id));
diesel::joinable!(alert_deliveries -> alert_channels (channel_id));
diesel::joinable!(alert_deliveries -> incidents (incident_id));
diesel::allow_tables_to_appear_in_same_query!(
    alert_channels,
    alert_rules,
    alert_rule_channels,
    incidents,
    alert_deliveries,
    checks,
    path_traces,
);
diesel::allow_tables_to_appear_in_same_query!(path_traces, agents);
