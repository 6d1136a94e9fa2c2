//! What most API tests start from: a quiet controller, a target site, an owner with
//! test credit and a volunteer.

use lastmile_testbed::site::TargetSite;

use crate::support::{target_site, TestApp, TestDb};

/// A quiet controller ([`TestApp::quiet`]), a target site, an owner named "owner" (its
/// API token; it has [`crate::support::OWNER_CREDIT`]) and a volunteer named
/// "volunteer" (its enrolment key): `(app, site, owner, key)`.
pub async fn start(db: &TestDb) -> (TestApp, TargetSite, String, String) {
    let app = TestApp::quiet(db).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let key = app.volunteer("volunteer");
    (app, site, owner, key)
}
