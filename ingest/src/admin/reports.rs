//! The accountant's reports: the liability at an instant and the activity per day, as JSON or,
//! with `Accept: text/csv`, as CSV.

use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use loyalty::orgs;
use loyalty::reports::{self, ActivityReport, LiabilityReport, MAX_REPORT_DAYS, Period};
use loyalty::time::Stamp;
use serde::Deserialize;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Path, Query};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orgs/{org}/reports/liability", get(liability))
        .route("/orgs/{org}/reports/activity", get(activity))
}

/// The earliest and latest instants a report may be asked for.
const EARLIEST: &str = "2000-01-01T00:00:00Z";
const LATEST: &str = "2100-01-01T00:00:00Z";

fn bound(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).map_or(DateTime::<Utc>::MIN_UTC, |t| t.to_utc())
}

/// Whether the client asked for CSV.
fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            media
                .split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/csv"))
        })
}

fn csv(body: String, name: &str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.csv\"")) {
        headers.insert(CONTENT_DISPOSITION, value);
    }
    response
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LiabilityQuery {
    /// The instant, RFC 3339 with an offset (`2026-03-21T00:00:00+05:00`), 2000 to 2100; now when
    /// absent.
    #[param(format = DateTime, pattern = "^20[0-9]{2}-")]
    pub at: Option<String>,
}

/// What the organization owes its customers at an instant: per wallet (main, referral; debt as
/// what customers owe) the sum of balances, the pending bonuses and what will expire within 7, 30
/// and 90 days. CSV (one row per wallet) with `Accept: text/csv`.
#[utoipa::path(get, path = "/admin/v1/orgs/{org}/reports/liability", tag = "reports",
    params(("org" = i64, Path), LiabilityQuery),
    responses((status = 200, content(
                  (LiabilityReport = "application/json"),
                  (String = "text/csv"))),
              (status = 404, body = ErrorBody)),
    security(("admin" = [])))]
pub async fn liability(
    State(state): State<AppState>,
    Path(org): Path<i64>,
    Query(query): Query<LiabilityQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let at = match query.at.as_deref() {
        None => Utc::now(),
        Some(text) => Stamp::parse_rfc3339(text.trim())
            .map(|s| s.utc())
            .ok()
            .filter(|at| (bound(EARLIEST)..=bound(LATEST)).contains(at))
            .ok_or_else(|| {
                ApiError::invalid(
                    "at",
                    "must be an RFC 3339 instant with an offset, from 2000 to 2100",
                )
            })?,
    };
    let mut tx = state.db.begin().await?;
    let organization = orgs::get(&mut tx, org).await?;
    let report = reports::liability(&mut tx, org, organization.time_zone, at).await?;
    tx.commit().await?;
    Ok(if wants_csv(&headers) {
        csv(reports::liability_csv(&report), "liability")
    } else {
        Json(report).into_response()
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActivityQuery {
    /// The first local day (`2026-03-01`), 2000 to 2100; 29 days before `to` when absent.
    #[param(format = Date, pattern = "^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")]
    pub from: Option<String>,
    /// The last local day, included; today when absent. At most 366 days after `from`.
    #[param(format = Date, pattern = "^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")]
    pub to: Option<String>,
    /// `day` (the only grouping).
    #[param(pattern = "^day$")]
    pub by: Option<String>,
}

fn parse_day(name: &str, text: &str) -> Result<NaiveDate, ApiError> {
    let low = NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or(NaiveDate::MIN);
    let high = NaiveDate::from_ymd_opt(2100, 1, 1).unwrap_or(NaiveDate::MAX);
    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .ok()
        .filter(|d| (low..=high).contains(d))
        .ok_or_else(|| ApiError::invalid(name, "must be a date like 2026-03-21, from 2000 to 2100"))
}

/// What moved per local day of the organization, `from` to `to`: accrued (pending ones
/// included), spent, refunds (given back and taken back), expired, referral, promo, welcome,
/// birthday, operator (accrued and deducted), activated, debt and imported movements. CSV (one
/// row per day) with `Accept: text/csv`.
#[utoipa::path(get, path = "/admin/v1/orgs/{org}/reports/activity", tag = "reports",
    params(("org" = i64, Path), ActivityQuery),
    responses((status = 200, content(
                  (ActivityReport = "application/json"),
                  (String = "text/csv"))),
              (status = 404, body = ErrorBody)),
    security(("admin" = [])))]
pub async fn activity(
    State(state): State<AppState>,
    Path(org): Path<i64>,
    Query(query): Query<ActivityQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if query.by.as_deref().is_some_and(|by| by != "day") {
        return Err(ApiError::invalid("by", "must be day"));
    }
    let from = query
        .from
        .as_deref()
        .map(|t| parse_day("from", t))
        .transpose()?;
    let to = query
        .to
        .as_deref()
        .map(|t| parse_day("to", t))
        .transpose()?;
    let mut tx = state.db.begin().await?;
    let organization = orgs::get(&mut tx, org).await?;
    let zone = organization.time_zone;
    let to = match (to, from) {
        (Some(to), _) => to,
        (None, Some(from)) => Stamp::now_in(zone)
            .0
            .date_naive()
            .min(from + Duration::days(MAX_REPORT_DAYS - 1))
            .max(from),
        (None, None) => Stamp::now_in(zone).0.date_naive(),
    };
    let from = from.unwrap_or_else(|| to - Duration::days(29));
    let period = Period::new(from, to)?;
    let report: ActivityReport = reports::activity(&mut tx, org, zone, period).await?;
    tx.commit().await?;
    Ok(if wants_csv(&headers) {
        csv(reports::activity_csv(&report), "activity")
    } else {
        Json(report).into_response()
    })
}
