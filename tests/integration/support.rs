//! Test support: a fresh database per test on either backend, a controller on a
//! random port, and clients that speak to it from chosen loopback addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};
use lastmile_controller::config::ControllerConfig;
use lastmile_controller::Controller;
use lastmile_domain::geo::GeoConfig;
use lastmile_storage::{Backend, Db};
use lastmile_testbed::geodb::{self, TestNetwork};
use lastmile_testbed::site::{SiteConfig, TargetSite};
use serde_json::Value;

/// The PostgreSQL server tests create their databases on.
pub fn pg_admin_url() -> String {
    std::env::var("LASTMILE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of its own for one test, dropped afterwards.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    pg_name: Option<String>,
    _dir: tempfile::TempDir,
}

impl TestDb {
    pub fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => TestDb {
                backend,
                url: dir.path().join("test.db").display().to_string(),
                pg_name: None,
                _dir: dir,
            },
            Backend::Postgres => {
                let name = format!("lastmile_test_{}", uuid::Uuid::new_v4().simple());
                let admin = pg_admin_url();
                let mut conn = PgConnection::establish(&admin).unwrap_or_else(|e| {
                    panic!("PostgreSQL must be running at {admin} (scripts/test.sh starts it): {e}")
                });
                conn.batch_execute(&format!("CREATE DATABASE {name}"))
                    .unwrap();
                let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
                TestDb {
                    backend,
                    url: format!("{base}/{name}"),
                    pg_name: Some(name),
                    _dir: dir,
                }
            }
        }
    }
}

impl TestDb {
    /// `sqlite` or `postgres`, for naming artefacts.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// SQL: assignment `a` is done, closed by its result: `done` (the state the close wrote
/// before), or still `leased` in `assignments` with no open row (see
/// `lastmile_storage::assignments`).
pub const DONE: &str = "(a.state = 'done' OR (a.state = 'leased' AND NOT EXISTS \
     (SELECT 1 FROM open_assignments o WHERE o.assignment_id = a.id)))";

/// The `n` column of a `SELECT COUNT(*) AS n ...` on the app's database.
pub fn count(app: &TestApp, sql: &str) -> i64 {
    lastmile_storage::count_sql(&mut app.db().conn().unwrap(), sql).unwrap()
}

/// How many accepted results are still queued for folding (a queue entry holds a
/// run's results of one accepting transaction).
pub const QUEUED: &str = "SELECT CAST(COALESCE(SUM(results), 0) AS BIGINT) AS n FROM fold_queue";

/// Waits (at most 20 s) until the background pass (every second) has folded and paid
/// every accepted result: a report reads aggregates, so it shows a stored result only
/// once it is folded.
pub async fn all_folded(app: &TestApp) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while count(app, "SELECT COUNT(*) AS n FROM fold_queue") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "accepted results were not folded in 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

impl Drop for TestDb {
    /// Drops the PostgreSQL database once nothing is connected to it any more.
    ///
    /// A test's controller is dropped just before its database, often still running:
    /// dropping it only asks it to stop, and its loops and handlers go on with the pool
    /// for a moment. Dropping the database under them (`FORCE`) had the pool reconnect
    /// on its own threads, inside libpq, as the test process exited, which once ended a
    /// passing test with SIGSEGV. So this waits (at most [`DROP_WAIT`]) until the
    /// controller has stopped and its pool has closed its connections, and only then
    /// drops the database (still with `FORCE`, for whatever outlived the wait).
    fn drop(&mut self) {
        let Some(name) = &self.pg_name else { return };
        let Ok(mut conn) = PgConnection::establish(&pg_admin_url()) else {
            return;
        };
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let connected = format!(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM pg_stat_activity WHERE datname = '{name}'"
        );
        let deadline = std::time::Instant::now() + DROP_WAIT;
        while std::time::Instant::now() < deadline
            && diesel::RunQueryDsl::get_result::<Count>(diesel::sql_query(&connected), &mut conn)
                .is_ok_and(|c| c.n > 0)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = conn.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    }
}

/// Longest a test's end waits for its controller to stop before its database is
/// dropped: above the controller's graceful shutdown (5 s for requests in flight).
const DROP_WAIT: Duration = Duration::from_secs(10);

/// Runs a test body once per backend, each in its own fresh database.
#[macro_export]
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::TestDb::new(lastmile_storage::Backend::Sqlite)).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::TestDb::new(lastmile_storage::Backend::Postgres)).await
                }
            )*
        }
    };
}

/// Test agents' addresses and where the test geo databases put them.
pub const PLACES: [(Ipv4Addr, &str, &str, &str, u32); 4] = [
    (Ipv4Addr::new(127, 0, 0, 2), "DE", "BE", "Berlin", 64_501),
    (
        Ipv4Addr::new(127, 0, 0, 3),
        "US",
        "CA",
        "San Francisco",
        64_502,
    ),
    (Ipv4Addr::new(127, 0, 0, 4), "BR", "SP", "Sao Paulo", 64_503),
    (Ipv4Addr::new(127, 0, 0, 5), "DE", "BY", "Munich", 64_504),
];

/// Writes City and ASN databases for [`PLACES`] into `dir`.
pub fn test_geo(dir: &std::path::Path) -> GeoConfig {
    let networks: Vec<TestNetwork> = PLACES
        .iter()
        .map(|(ip, country, region, city, asn)| TestNetwork {
            network: ipnet::IpNet::from(IpAddr::V4(*ip)),
            country: (*country).into(),
            region: (*region).into(),
            city: (*city).into(),
            asn: *asn,
            as_org: format!("Test AS{asn}"),
        })
        .collect();
    let city = dir.join("city.mmdb");
    let asn = dir.join("asn.mmdb");
    geodb::write_city_db(&city, &networks).unwrap();
    geodb::write_asn_db(&asn, &networks).unwrap();
    GeoConfig {
        city_db: Some(city),
        asn_db: Some(asn),
        ..GeoConfig::default()
    }
}

/// The password of every account the tests sign up (see `dashboard::sign_up`).
pub const PASSWORD: &str = "a long enough password";

/// The test credit [`TestApp::owner`] grants: 10 000.00 usd.
pub const OWNER_CREDIT: i64 = 1_000_000;

/// A controller serving a test database.
pub struct TestApp {
    pub controller: Controller,
    pub base: String,
    _geo_dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn start(db: &TestDb) -> TestApp {
        TestApp::start_with(db, |_| {}).await
    }

    /// A controller whose scheduler never ticks: only the runs a test asks for happen.
    pub async fn quiet(db: &TestDb) -> TestApp {
        TestApp::start_with(db, |c| c.scheduler_tick_ms = 3_600_000).await
    }

    /// A quiet controller ([`TestApp::quiet`]) that has real agents heartbeat every
    /// second, so that they come online (and see new work) quickly.
    pub async fn quiet_for_real_agents(db: &TestDb) -> TestApp {
        TestApp::start_with(db, |c| {
            c.scheduler_tick_ms = 3_600_000;
            c.heartbeat_interval_s = 1;
        })
        .await
    }

    pub async fn start_with(db: &TestDb, tweak: impl FnOnce(&mut ControllerConfig)) -> TestApp {
        let geo_dir = tempfile::tempdir().unwrap();
        let mut config = ControllerConfig {
            database_url: Some(db.url.clone()),
            data_dir: PathBuf::from(geo_dir.path()),
            geo: test_geo(geo_dir.path()),
            allow_private_sites: true,
            min_check_interval_s: 1,
            scheduler_tick_ms: 100,
            agent_refresh_ms: 100,
            max_db_connections: 16,
            ..ControllerConfig::default()
        };
        tweak(&mut config);
        let controller = Controller::start(config, SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        TestApp::serving(controller, geo_dir)
    }

    /// Reads agent rows changed behind the controller's back (as its refresh loop would).
    pub fn refresh_agents(&self) {
        let presence = &self.controller.state.presence;
        presence.refresh(&mut self.db().conn().unwrap()).unwrap();
    }

    /// Writes the heartbeats the controller holds in memory (as its flush loop would).
    pub fn flush_heartbeats(&self) {
        let presence = &self.controller.state.presence;
        let pending = presence.take_pending();
        lastmile_domain::presence::flush(&mut self.db().conn().unwrap(), &pending).unwrap();
    }

    /// The app of a running `controller` whose geo databases are in `geo_dir`.
    fn serving(controller: Controller, geo_dir: tempfile::TempDir) -> TestApp {
        let base = controller.url();
        TestApp {
            controller,
            base,
            _geo_dir: geo_dir,
        }
    }

    /// A controller whose ownership-proof mail goes to `mailer`.
    pub async fn start_with_mailer(
        db: &TestDb,
        mailer: std::sync::Arc<dyn lastmile_domain::isp::Mailer>,
    ) -> TestApp {
        let geo_dir = tempfile::tempdir().unwrap();
        let config = ControllerConfig {
            database_url: Some(db.url.clone()),
            data_dir: PathBuf::from(geo_dir.path()),
            geo: test_geo(geo_dir.path()),
            ..ControllerConfig::default()
        };
        let mut state =
            tokio::task::spawn_blocking(move || lastmile_controller::AppState::open(config))
                .await
                .unwrap()
                .unwrap();
        state.mailer = mailer;
        let controller = Controller::serve(state, SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        TestApp::serving(controller, geo_dir)
    }

    pub fn db(&self) -> &Db {
        &self.controller.state.db
    }

    /// A new owner's API token. The owner has [`OWNER_CREDIT`] of test credit, so
    /// that runs are not refused for money; [`TestApp::owner_with_credit`] for others.
    pub fn owner(&self, name: &str) -> String {
        self.owner_with_credit(name, OWNER_CREDIT).1
    }

    /// A new owner with `credit_minor` usd cents of credit: (owner id, API token).
    pub fn owner_with_credit(&self, name: &str, credit_minor: i64) -> (String, String) {
        let mut conn = self.db().conn().unwrap();
        let (owner, token) = lastmile_domain::accounts::create_owner(&mut conn, name).unwrap();
        if credit_minor > 0 {
            self.credit(&owner.id, credit_minor);
        }
        (owner.id, token)
    }

    /// Grants the owner `minor` usd cents of test credit (a new grant each call).
    pub fn credit(&self, owner_id: &str, minor: i64) {
        let mut conn = self.db().conn().unwrap();
        lastmile_domain::billing::grant_credit(
            &mut conn,
            owner_id,
            lastmile_billing::Money::new(minor, lastmile_billing::Currency::USD),
            &uuid::Uuid::new_v4().to_string(),
        )
        .unwrap();
    }

    /// A new volunteer's enrolment key.
    pub fn volunteer(&self, name: &str) -> String {
        let mut conn = self.db().conn().unwrap();
        lastmile_domain::accounts::create_volunteer(&mut conn, name)
            .unwrap()
            .1
    }

    /// The login of an account signed up with [`PASSWORD`] (its owner or volunteer id).
    pub fn login(&self, email: &str) -> lastmile_domain::logins::Login {
        lastmile_domain::logins::authenticate(&mut self.db().conn().unwrap(), email, PASSWORD)
            .unwrap()
    }

    /// An HTTP client sending from `source`.
    pub fn client_from(source: Ipv4Addr) -> reqwest::Client {
        reqwest::Client::builder()
            .local_address(IpAddr::V4(source))
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    /// A request to the API with an optional bearer token.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_from(Ipv4Addr::LOCALHOST, method, path, token, body)
            .await
    }

    pub async fn call_from(
        &self,
        source: Ipv4Addr,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let client = Self::client_from(source);
        let mut req = client.request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// Enrols an agent from `source` and heartbeats once; returns its token.
    pub async fn agent(
        &self,
        source: Ipv4Addr,
        key: &str,
        class: &str,
        max_concurrent: u32,
    ) -> String {
        let enrol = serde_json::json!({"enrol_key": key, "name": "test agent", "declared_class": class, "version": "test"});
        let (status, enrolled) = self
            .call_from(source, "POST", "/api/v1/agents/enrol", None, Some(enrol))
            .await;
        assert_eq!(status, 201, "{enrolled}");
        let token = enrolled["token"].as_str().unwrap().to_owned();
        let beat = serde_json::json!({"declared_class": class, "version": "test", "limits": {"max_concurrent": max_concurrent}});
        let (status, ack) = self
            .call_from(
                source,
                "POST",
                "/api/v1/agents/heartbeat",
                Some(&token),
                Some(beat),
            )
            .await;
        assert_eq!(status, 200, "{ack}");
        calibrate_as_declared(self, &token);
        token
    }

    /// Enrols an agent like [`TestApp::agent`], measuring one thing at a time, but
    /// leaves it uncalibrated: runs do not plan it in.
    pub async fn uncalibrated_agent(&self, source: Ipv4Addr, key: &str, class: &str) -> String {
        let token = self.agent(source, key, class, 1).await;
        set_calibration(self, &token, None);
        token
    }

    /// Creates a check through the API (`body` as `POST /api/v1/checks` takes it);
    /// returns the created check.
    pub async fn create_check(&self, owner: &str, body: Value) -> Value {
        let (status, check) = self
            .call("POST", "/api/v1/checks", Some(owner), Some(body))
            .await;
        assert_eq!(status, 201, "{check}");
        check
    }

    /// Asks for a run of `check` now; returns the run's id.
    pub async fn start_run(&self, owner: &str, check: &str) -> String {
        let (status, run) = self.ask_run(owner, check).await;
        assert_eq!(status, 201, "{run}");
        run["id"].as_str().unwrap().to_owned()
    }

    /// Verifies `site` for `owner` and creates a check of `url` with `selection`;
    /// returns the check's id.
    pub async fn site_check(
        &self,
        owner: &str,
        site: &TargetSite,
        url: String,
        selection: Value,
    ) -> String {
        let site_id = self.verified_site(owner, site).await;
        let body = serde_json::json!({"site_id": site_id, "url": url, "selection": selection});
        let check = self.create_check(owner, body).await;
        check["id"].as_str().unwrap().to_owned()
    }

    /// Starts a run of `check` and leases the agent with `token` one task; returns the
    /// task (`null` if none was offered).
    pub async fn run_and_lease(&self, owner: &str, check: &str, token: &str) -> Value {
        self.start_run(owner, check).await;
        let (status, lease) = self.lease(token, 1).await;
        assert_eq!(status, 200, "{lease}");
        lease["tasks"][0].clone()
    }

    /// A dashboard session (its cookie) for the owner behind the API `token`, with a
    /// login made for it.
    pub async fn owner_session(&self, token: &str) -> String {
        use lastmile_domain::logins::{self, Account};
        let (_, me) = self.get("/api/v1/me", token).await;
        let id = me["id"].as_str().unwrap().to_owned();
        let mut conn = self.db().conn().unwrap();
        let email = format!("{id}@owners.test");
        let login = logins::add_login(
            &mut conn,
            Account::Owner(&id),
            &email,
            "correct horse battery",
        )
        .unwrap();
        format!(
            "lm_session={}",
            logins::start_session(&mut conn, &login.id).unwrap()
        )
    }

    /// A dashboard page's HTML, read with a session `cookie` (200 expected).
    pub async fn dashboard_page(&self, cookie: &str, path: &str) -> String {
        let answer = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{path}");
        answer.text().await.unwrap()
    }

    /// `GET path` with `token`: the answer as it comes.
    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call("GET", path, Some(token), None).await
    }

    /// `POST /api/v1/checks` with `body` as `owner`: the answer as it comes.
    pub async fn post_check(&self, owner: &str, body: Value) -> (u16, Value) {
        self.call("POST", "/api/v1/checks", Some(owner), Some(body))
            .await
    }

    /// `POST /api/v1/checks/{check}/runs` as `owner`: the answer as it comes.
    pub async fn ask_run(&self, owner: &str, check: &str) -> (u16, Value) {
        let path = format!("/api/v1/checks/{check}/runs");
        self.call("POST", &path, Some(owner), None).await
    }

    /// `POST /api/v1/agents/lease` for up to `max` tasks as the agent with `token`: the
    /// answer as it comes.
    /// Sends `beat` as the heartbeat of the agent `token` from `source`.
    pub async fn heartbeat_from(&self, source: Ipv4Addr, token: &str, beat: Value) -> (u16, Value) {
        self.call_from(
            source,
            "POST",
            "/api/v1/agents/heartbeat",
            Some(token),
            Some(beat),
        )
        .await
    }

    pub async fn lease(&self, token: &str, max: u32) -> (u16, Value) {
        self.lease_from(Ipv4Addr::LOCALHOST, token, max).await
    }

    /// [`TestApp::lease`] sent from `source`.
    pub async fn lease_from(&self, source: Ipv4Addr, token: &str, max: u32) -> (u16, Value) {
        let body = serde_json::json!({ "max": max });
        self.call_from(
            source,
            "POST",
            "/api/v1/agents/lease",
            Some(token),
            Some(body),
        )
        .await
    }

    /// Leases like [`TestApp::lease`] until a task comes, for work offered behind the
    /// controller's back (an expiry pass a test ran itself): the agent was told there
    /// was none, and the work feed wakes it within a quarter second. Gives up after 5 s
    /// with the last answer.
    pub async fn lease_when_offered(&self, token: &str, max: u32) -> Value {
        let mut last = Value::Null;
        for _ in 0..50 {
            let (status, body) = self.lease(token, max).await;
            assert_eq!(status, 200, "{body}");
            if body["tasks"].as_array().is_some_and(|t| !t.is_empty()) {
                return body;
            }
            last = body;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        last
    }

    /// `POST /api/v1/results` with `result` as the agent with `token`: the answer as it
    /// comes.
    pub async fn submit(&self, token: &str, result: Value) -> (u16, Value) {
        self.call("POST", "/api/v1/results", Some(token), Some(result))
            .await
    }

    /// `POST /api/v1/owner/credit/checkout` with `body` (as `owner`, if any): the answer
    /// as it comes.
    pub async fn ask_checkout(&self, owner: Option<&str>, body: Value) -> (u16, Value) {
        let path = "/api/v1/owner/credit/checkout";
        self.call("POST", path, owner, Some(body)).await
    }

    /// `GET /api/v1/checks/{check}/report?{query}` as `owner`: the answer as it comes.
    pub async fn report(&self, owner: &str, check: &str, query: &str) -> (u16, Value) {
        self.get(&format!("/api/v1/checks/{check}/report?{query}"), owner)
            .await
    }

    /// Adds and verifies a site served by `origin`'s test site; returns its id.
    /// Posts a dashboard form as the signed-in `cookie`, without following the
    /// redirect that answers a saved form.
    pub async fn post_form(
        &self,
        cookie: &str,
        path: &str,
        form: &[(&str, String)],
    ) -> reqwest::Response {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .post(format!("{}{path}", self.base))
            .header("cookie", cookie)
            .form(form)
            .send()
            .await
            .unwrap()
    }

    pub async fn verified_site(&self, owner: &str, site: &TargetSite) -> String {
        let (status, created) = self
            .call(
                "POST",
                "/api/v1/sites",
                Some(owner),
                Some(serde_json::json!({"origin": site.origin()})),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        site.publish_verification_token(created["verification_token"].as_str().unwrap());
        let id = created["id"].as_str().unwrap().to_owned();
        let (status, verified) = self
            .call(
                "POST",
                &format!("/api/v1/sites/{id}/verify"),
                Some(owner),
                Some(serde_json::json!({})),
            )
            .await;
        assert_eq!(status, 200, "{verified}");
        assert_eq!(verified["verified"], true);
        id
    }
}

/// How many ledger transactions of `kind` (`result`, `purchase`, ...) are recorded.
pub fn ledger_transactions(app: &TestApp, kind: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) AS n FROM ledger_transactions WHERE kind = '{kind}'");
    count(app, &sql)
}

/// A target site on a free loopback port, configured as by default.
pub async fn target_site() -> TargetSite {
    TargetSite::start("127.0.0.1:0".parse().unwrap(), SiteConfig::default())
        .await
        .unwrap()
}

/// What `GET /api/v1/me/balance` answers the holder of `token` (asserting a 200).
pub async fn balance_sheet(app: &TestApp, token: &str) -> Value {
    let (status, body) = app.get("/api/v1/me/balance", token).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The holder's (owner's or volunteer's) `kind` balance in usd, minor units, as
/// `GET /api/v1/me/balance` lists it for `token`.
pub async fn usd_balance(app: &TestApp, token: &str, kind: &str) -> i64 {
    let body = balance_sheet(app, token).await;
    body["balances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["kind"] == kind && b["currency"] == "usd")
        .unwrap_or_else(|| panic!("no {kind} in {body}"))["balance_minor"]
        .as_i64()
        .unwrap()
}

/// A line as the controller measured it in calibration: (class, rtt µs, down bit/s).
pub type MeasuredLine<'a> = (&'a str, i64, i64);

/// Marks the agent with `token` calibrated, its measured class its declared one, as if
/// the controller had measured a fast line next door (40 µs, 100 Gbit/s): runs plan
/// only calibrated agents, and these figures keep every honest loopback timing within
/// the line rules of `verification`. Tests of calibration itself go through the real
/// endpoints instead.
pub fn calibrate_as_declared(app: &TestApp, token: &str) {
    calibrate_in(app.db(), token);
    app.refresh_agents();
}

fn calibrate_in(db: &Db, token: &str) {
    let mut conn = db.conn().unwrap();
    let agent = lastmile_domain::agents::agent_by_token(&mut conn, token)
        .unwrap()
        .unwrap();
    drop(conn);
    set_calibration_in(
        db,
        token,
        Some((&agent.declared_class, 40, 100_000_000_000)),
    );
}

/// Calibrates (as [`calibrate_as_declared`]) the real agent whose state directory is
/// `state_dir` as soon as it has enrolled (its `credentials.json` appears), from a
/// background task that gives up after 60 s. For tests that run real agents with
/// calibration off, so that the declared class stands and runs plan them in.
pub fn calibrate_when_enrolled(app: &TestApp, state_dir: &std::path::Path) {
    let db = app.db().clone();
    let file = state_dir.join("credentials.json");
    tokio::spawn(async move {
        for _ in 0..12_000 {
            if let Ok(bytes) = std::fs::read(&file) {
                if let Ok(creds) =
                    serde_json::from_slice::<lastmile_agent::runner::Credentials>(&bytes)
                {
                    tokio::task::spawn_blocking(move || calibrate_in(&db, &creds.token))
                        .await
                        .unwrap();
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
}

/// Sets (or with `None` clears) what the controller measured of the agent's line.
/// The controller serves the change at once (it would within `agent_refresh_ms`).
pub fn set_calibration(app: &TestApp, token: &str, line: Option<MeasuredLine<'_>>) {
    set_calibration_in(app.db(), token, line);
    app.refresh_agents();
}

fn set_calibration_in(db: &Db, token: &str, line: Option<MeasuredLine<'_>>) {
    use diesel::RunQueryDsl;
    let mut conn = db.conn().unwrap();
    let agent = lastmile_domain::agents::agent_by_token(&mut conn, token)
        .unwrap()
        .unwrap();
    let sql = match line {
        Some((class, rtt_us, down_bps)) => format!(
            "UPDATE agents SET measured_class = '{class}', calibrated_at = {now}, rtt_us = {rtt_us}, \
             down_bps = {down_bps}, up_bps = {up}, class_mismatch = FALSE, changed_at = {now} \
             WHERE id = '{id}'",
            now = lastmile_domain::clock::now_us(),
            up = down_bps / 8,
            id = agent.id
        ),
        None => format!(
            "UPDATE agents SET measured_class = NULL, calibrated_at = NULL, rtt_us = NULL, \
             down_bps = NULL, up_bps = NULL, changed_at = {} WHERE id = '{}'",
            lastmile_domain::clock::now_us(),
            agent.id
        ),
    };
    diesel::sql_query(sql).execute(&mut conn).unwrap();
}

/// The value of the hidden `csrf` field of a dashboard page.
pub fn csrf_of(html: &str) -> String {
    let at = html.find(r#"name="csrf" value=""#).expect("a csrf field") + 19;
    html[at..].split('"').next().unwrap().to_owned()
}
