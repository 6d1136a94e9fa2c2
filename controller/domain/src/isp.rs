//! ISPs: accounts that own autonomous systems and read how their networks perform.
//!
//! An ISP sees only rows measured by agents inside its own ASNs, and only from checks
//! whose owners opted in to ISP sharing. It never sees a check's URL (only the
//! destination host) nor an agent's address.
//!
//! **Architecture Invariant:** every ISP query is scoped by [`scope`] first: the ISP's
//! ASNs, narrowed to the one it asked for, which must be its own (403 naming it
//! otherwise). Nothing in this module reads aggregates without that scope.
//!
//! ASN ownership is set by an operator (`lastmile-controller isp create --asn ...`) or
//! proven by a code mailed to the ASN's registered contact address (kept by the operator
//! in `asn_contacts`). Mail delivery is behind the [`Mailer`] trait; the default
//! implementation logs the message.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::accounts::{hash_secret, new_secret, validate_name};
use crate::clock::{now_us, to_datetime, to_us, Micros, HOUR_US};
use crate::error::{Error, Result};
use crate::ingest::AggregateRow;
use crate::reports::{self, Dimension, ReportRow};
pub use lastmile_storage::isps::Isp;
use lastmile_storage::schema::{aggregates, asn_claims, asn_contacts, checks, isp_asns, isps};
use lastmile_storage::{write_tx, DbConn};

/// Creates an ISP owning `asns` (set by an operator); returns it with its API token.
pub fn create(conn: &mut DbConn, name: &str, asns: &[u32]) -> Result<(Isp, String)> {
    let name = validate_name(name)?;
    let token = new_secret("lmi_");
    let isp = Isp {
        id: Uuid::new_v4().to_string(),
        name,
        token_hash: hash_secret(&token),
        created_at: now_us(),
    };
    write_tx(conn, |c| {
        diesel::insert_into(isps::table).values(&isp).execute(c)?;
        for asn in asns {
            add_asn(c, &isp.id, *asn, "admin")?;
        }
        Ok::<_, Error>(())
    })?;
    Ok((isp, token))
}

/// Records that `isp_id` owns `asn`.
pub fn add_asn(conn: &mut DbConn, isp_id: &str, asn: u32, proven_by: &str) -> Result<()> {
    if asn == 0 {
        return Err(Error::invalid("invalid_asn", "AS0 is reserved"));
    }
    let exists: i64 = isp_asns::table
        .filter(
            isp_asns::isp_id
                .eq(isp_id)
                .and(isp_asns::asn.eq(i64::from(asn))),
        )
        .count()
        .get_result(conn)?;
    if exists == 0 {
        diesel::insert_into(isp_asns::table)
            .values((
                isp_asns::isp_id.eq(isp_id),
                isp_asns::asn.eq(i64::from(asn)),
                isp_asns::proven_by.eq(proven_by),
                isp_asns::created_at.eq(now_us()),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// The ISP holding `token`, if any.
pub fn by_token(conn: &mut DbConn, token: &str) -> Result<Option<Isp>> {
    Ok(isps::table
        .filter(isps::token_hash.eq(hash_secret(token)))
        .select(Isp::as_select())
        .first(conn)
        .optional()?)
}

/// The ASNs an ISP owns, ascending.
pub fn asns_of(conn: &mut DbConn, isp_id: &str) -> Result<Vec<u32>> {
    let asns: Vec<i64> = isp_asns::table
        .filter(isp_asns::isp_id.eq(isp_id))
        .order(isp_asns::asn)
        .select(isp_asns::asn)
        .load(conn)?;
    Ok(asns
        .into_iter()
        .filter_map(|a| u32::try_from(a).ok())
        .collect())
}

/// The ASNs a query may read: all of the ISP's, or the one asked for if it is theirs.
pub fn scope(conn: &mut DbConn, isp: &Isp, asn: Option<u32>) -> Result<Vec<u32>> {
    let owned = asns_of(conn, &isp.id)?;
    match asn {
        None => Ok(owned),
        Some(a) if owned.contains(&a) => Ok(vec![a]),
        Some(a) => Err(Error::forbidden(
            "asn_not_yours",
            format!(
                "AS{a} is not one of your networks; yours are {}",
                list_asns(&owned)
            ),
        )),
    }
}

fn list_asns(asns: &[u32]) -> String {
    if asns.is_empty() {
        return "none yet".into();
    }
    asns.iter()
        .map(|a| format!("AS{a}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Delivers mail. The product logs it until a mail provider is configured.
pub trait Mailer: Send + Sync {
    /// Sends one message.
    fn send(&self, to: &str, subject: &str, body: &str) -> std::result::Result<(), String>;

    /// Whether mail reaches the addressee (false for [`LogMailer`]: email alert channels
    /// are refused, since nothing would arrive).
    fn delivers(&self) -> bool {
        true
    }
}

/// Writes every message to the log instead of sending it.
#[derive(Debug, Default)]
pub struct LogMailer;

impl Mailer for LogMailer {
    fn send(&self, to: &str, subject: &str, body: &str) -> std::result::Result<(), String> {
        tracing::info!(%to, %subject, %body, "mail (log delivery)");
        Ok(())
    }

    fn delivers(&self) -> bool {
        false
    }
}

/// Keeps every message in memory (tests, the demo).
#[derive(Debug, Default)]
pub struct MemoryMailer {
    pub sent: Mutex<Vec<(String, String, String)>>,
}

impl Mailer for MemoryMailer {
    fn send(&self, to: &str, subject: &str, body: &str) -> std::result::Result<(), String> {
        self.sent
            .lock()
            .map_err(|_| "mailer poisoned".to_owned())?
            .push((to.to_owned(), subject.to_owned(), body.to_owned()));
        Ok(())
    }
}

/// Records the address ownership proofs for `asn` go to.
pub fn set_contact(conn: &mut DbConn, asn: u32, email: &str) -> Result<()> {
    let email = email.trim();
    if !email.contains('@') || email.len() > 254 {
        return Err(Error::invalid(
            "invalid_email",
            format!("{email:?} is not an email address"),
        ));
    }
    write_tx(conn, |c| {
        diesel::delete(asn_contacts::table.find(i64::from(asn))).execute(c)?;
        diesel::insert_into(asn_contacts::table)
            .values((
                asn_contacts::asn.eq(i64::from(asn)),
                asn_contacts::email.eq(email),
            ))
            .execute(c)?;
        Ok(())
    })
}

/// A pending ownership proof, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClaimView {
    pub id: Uuid,
    pub asn: u32,
    /// The registered contact the code went to, partly hidden.
    pub sent_to: String,
    pub expires_at: DateTime<Utc>,
}

const CLAIM_TTL_US: Micros = 24 * HOUR_US;
const CLAIM_MAX_ATTEMPTS: i32 = 5;

/// Refuses a claim on an ASN that already has an owner: the ISP itself (nothing to
/// prove) or another ISP (409 `asn_owned`). A proof by mail only gives an ASN without
/// an owner; taking one from its owner is an operator's decision, and mailing its
/// contact on a stranger's behalf would only be noise (or a nuisance on demand).
fn unowned_or_conflict(conn: &mut DbConn, isp: &Isp, asn: u32) -> Result<()> {
    let owners: Vec<String> = isp_asns::table
        .filter(isp_asns::asn.eq(i64::from(asn)))
        .select(isp_asns::isp_id)
        .load(conn)?;
    if owners.contains(&isp.id) {
        return Err(Error::conflict(
            "asn_already_yours",
            format!("AS{asn} is already one of your networks; there is nothing to prove"),
        ));
    }
    if !owners.is_empty() {
        return Err(Error::conflict(
            "asn_owned",
            format!(
                "AS{asn} belongs to another ISP; an operator must transfer it \
                 (no code was sent)"
            ),
        ));
    }
    Ok(())
}

/// Starts proving ownership of `asn`: mails a one-time code to its registered contact.
/// Only for an ASN nobody owns yet (see [`unowned_or_conflict`]).
pub fn start_claim(
    conn: &mut DbConn,
    mailer: &dyn Mailer,
    isp: &Isp,
    asn: u32,
) -> Result<ClaimView> {
    unowned_or_conflict(conn, isp, asn)?;
    let contact: Option<String> = asn_contacts::table
        .find(i64::from(asn))
        .select(asn_contacts::email)
        .first(conn)
        .optional()?;
    let Some(contact) = contact else {
        return Err(Error::NotFound {
            what: "registered contact for this ASN",
            code: "asn_contact_unknown",
        });
    };
    let code = new_secret("")[..12].to_owned();
    let now = now_us();
    let id = Uuid::new_v4();
    diesel::insert_into(asn_claims::table)
        .values((
            asn_claims::id.eq(id.to_string()),
            asn_claims::isp_id.eq(&isp.id),
            asn_claims::asn.eq(i64::from(asn)),
            asn_claims::code_hash.eq(hash_secret(&code)),
            asn_claims::sent_to.eq(&contact),
            asn_claims::created_at.eq(now),
            asn_claims::expires_at.eq(now + CLAIM_TTL_US),
            asn_claims::attempts.eq(0),
        ))
        .execute(conn)?;
    mailer
        .send(
            &contact,
            &format!("Lastmile: confirm that {} operates AS{asn}", isp.name),
            &format!(
                "{} asks to read Lastmile measurements of AS{asn}.\n\
                 If they operate it on your behalf, give them this code: {code}\n\
                 It expires in 24 hours. If not, ignore this mail.",
                isp.name
            ),
        )
        .map_err(|e| Error::Unavailable(format!("cannot send mail: {e}")))?;
    Ok(ClaimView {
        id,
        asn,
        sent_to: mask_email(&contact),
        expires_at: to_datetime(now + CLAIM_TTL_US),
    })
}

fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((user, domain)) => format!("{}***@{domain}", user.chars().next().unwrap_or('*')),
        None => "***".into(),
    }
}

/// Confirms a claim with the mailed code; the ASN then belongs to the ISP.
pub fn confirm_claim(conn: &mut DbConn, isp: &Isp, claim_id: &str, code: &str) -> Result<Vec<u32>> {
    let now = now_us();
    write_tx(conn, |c| {
        let claim: Option<(i64, String, i64, i32, Option<i64>)> = asn_claims::table
            .filter(
                asn_claims::id
                    .eq(claim_id)
                    .and(asn_claims::isp_id.eq(&isp.id)),
            )
            .select((
                asn_claims::asn,
                asn_claims::code_hash,
                asn_claims::expires_at,
                asn_claims::attempts,
                asn_claims::confirmed_at,
            ))
            .first(c)
            .optional()?;
        let Some((asn, code_hash, expires_at, attempts, confirmed_at)) = claim else {
            return Err(Error::NotFound {
                what: "claim",
                code: "claim_not_found",
            });
        };
        if confirmed_at.is_none() {
            // Another ISP may have confirmed its own claim meanwhile (owning it
            // already, by an operator's grant, is fine).
            match unowned_or_conflict(c, isp, u32::try_from(asn).unwrap_or(0)) {
                Ok(())
                | Err(Error::Conflict {
                    code: "asn_already_yours",
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
            if expires_at < now || attempts >= CLAIM_MAX_ATTEMPTS {
                return Err(Error::conflict(
                    "claim_expired",
                    "this claim expired or had too many wrong codes; start a new one",
                ));
            }
            if hash_secret(code.trim()) != code_hash {
                diesel::update(asn_claims::table.find(claim_id))
                    .set(asn_claims::attempts.eq(attempts + 1))
                    .execute(c)?;
                return Ok(Err(Error::invalid("wrong_code", "the code does not match")));
            }
            diesel::update(asn_claims::table.find(claim_id))
                .set(asn_claims::confirmed_at.eq(now))
                .execute(c)?;
            add_asn(c, &isp.id, u32::try_from(asn).unwrap_or(0), "email")?;
        }
        Ok(Ok(()))
    })
    // A wrong code must still count the attempt, so it commits and is reported after.
    .and_then(|outcome: std::result::Result<(), Error>| outcome)?;
    asns_of(conn, &isp.id)
}

/// Which window an ISP query covers and which of its ASNs.
#[derive(Debug, Clone)]
pub struct IspQuery {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub asn: Option<u32>,
}

/// Aggregates of opted-in checks, measured inside `asns`, in the window.
fn scoped_aggregates(
    conn: &mut DbConn,
    asns: &[u32],
    query: &IspQuery,
) -> Result<Vec<(String, AggregateRow)>> {
    if query.to <= query.from {
        return Err(Error::invalid(
            "invalid_window",
            "`to` must be after `from`",
        ));
    }
    let asns: Vec<i64> = asns.iter().map(|a| i64::from(*a)).collect();
    let rows: Vec<(String, AggregateRow)> = aggregates::table
        .inner_join(checks::table.on(checks::id.eq(aggregates::check_id)))
        .filter(checks::isp_sharing.eq(true))
        .filter(aggregates::asn.eq_any(&asns))
        .filter(aggregates::bucket_start.ge(crate::clock::hour_bucket(to_us(query.from))))
        .filter(aggregates::bucket_start.lt(to_us(query.to)))
        .select((checks::url, AggregateRow::as_select()))
        .load(conn)?;
    Ok(rows)
}

/// SLA summary per ASN x connection class x region.
pub fn summary(
    conn: &mut DbConn,
    isp: &Isp,
    query: &IspQuery,
) -> Result<(Vec<u32>, Vec<ReportRow>)> {
    let asns = scope(conn, isp, query.asn)?;
    let rows: Vec<AggregateRow> = scoped_aggregates(conn, &asns, query)?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let merged = reports::merge(
        &rows,
        &[
            Dimension::Asn,
            Dimension::ConnectionClass,
            Dimension::Region,
        ],
    )?;
    Ok((asns, merged))
}

/// One destination host, as seen from the ISP's networks.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Destination {
    /// Host name of the measured site (never the full URL).
    pub destination: String,
    #[serde(flatten)]
    pub row: ReportRow,
}

/// Destinations ordered worst first (highest total p95, then lowest availability).
pub fn worst_destinations(
    conn: &mut DbConn,
    isp: &Isp,
    query: &IspQuery,
    limit: usize,
) -> Result<Vec<Destination>> {
    let asns = scope(conn, isp, query.asn)?;
    let mut by_host: BTreeMap<String, Vec<AggregateRow>> = BTreeMap::new();
    for (url, row) in scoped_aggregates(conn, &asns, query)? {
        let host = url::Url::parse(&url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        by_host.entry(host).or_default().push(row);
    }
    let mut out = Vec::new();
    for (host, rows) in by_host {
        for row in reports::merge(&rows, &[])? {
            out.push(Destination {
                destination: host.clone(),
                row,
            });
        }
    }
    out.sort_by_key(|d| std::cmp::Reverse(worst_key(&d.row)));
    out.truncate(limit);
    Ok(out)
}

/// Sort key for "worst": total p95 (µs), then unavailability.
fn worst_key(row: &ReportRow) -> (u64, u64) {
    let p95 = row
        .phases
        .get(&lastmile_protocol::Phase::Total)
        .map_or(0, |p| p.p95);
    (p95, ((1.0 - row.availability) * 1e6) as u64)
}

/// One point of an ISP time series.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SeriesPoint {
    pub bucket_start: DateTime<Utc>,
    pub rows: Vec<ReportRow>,
}

/// Hour or day buckets over the window, each grouped by ASN and connection class.
pub fn series(
    conn: &mut DbConn,
    isp: &Isp,
    query: &IspQuery,
    bucket_us: Micros,
) -> Result<Vec<SeriesPoint>> {
    let asns = scope(conn, isp, query.asn)?;
    let mut buckets: BTreeMap<Micros, Vec<AggregateRow>> = BTreeMap::new();
    for (_, row) in scoped_aggregates(conn, &asns, query)? {
        buckets
            .entry(row.bucket_start.div_euclid(bucket_us) * bucket_us)
            .or_default()
            .push(row);
    }
    buckets
        .into_iter()
        .map(|(start, rows)| {
            Ok(SeriesPoint {
                bucket_start: to_datetime(start),
                rows: reports::merge(&rows, &[Dimension::Asn, Dimension::ConnectionClass])?,
            })
        })
        .collect()
}
