//! The cash registers' protocol, version 0.1.0, in exactly the shapes of the logged traffic:
//! `hello`, the open bill list, a bill by id, and receipts. A receipt gets its 200 only once the
//! broker has confirmed it persisted; ingest writes nothing to the database per receipt.

use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use loyalty::bills::{self, PosBill};
use loyalty::money::serialize_decimal;
use loyalty::orgs::{self, Integration};
use loyalty::queue::{Stream, contract};
use loyalty::receipts::{IncomingEvent, RECEIPT_CREATED, Receipt, ReceiptMessage};
use loyalty::time::{OrgTimeZone, Stamp};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Path, Query, RawBody, bearer, parse_json};

pub const PROTOCOL: &str = "0.1.0";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v2/hello", get(hello))
        .route("/api/v2/list", get(list))
        .route("/api/v2/bill/byid/{id}", get(bill_by_id))
        .route("/api/v2/receipts", post(receipt))
}

/// The integration a request's POS token belongs to. Tokens are looked up by their sha256 and
/// cached for a minute, so receipts keep flowing while the database is briefly away.
pub struct Pos(pub Integration);

impl FromRequestParts<AppState> for Pos {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers)
            .ok_or(ApiError::Unauthorized)?
            .to_owned();
        let key = orgs::token_digest(&token);
        if let Some(found) = state.pos_tokens.get(&key).await {
            return Ok(Pos(found));
        }
        let mut conn = state.db.acquire().await?;
        let found = orgs::integration_by_token(&mut conn, &token)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        state.pos_tokens.insert(key, found.clone()).await;
        Ok(Pos(found))
    }
}

/// The integration's system name and the protocol version: the register's connection check.
#[utoipa::path(get, path = "/api/v2/hello", tag = "POS",
    responses((status = 200, body = crate::openapi::pos_shapes::PosHello)), security(("pos" = [])))]
async fn hello(Pos(pos): Pos) -> Json<Hello> {
    Json(Hello {
        system: pos.system,
        protocol: PROTOCOL,
    })
}

// The answers' shapes, fields in the order of the logged traffic; amounts as the log writes them
// (`17500`, `1107.36`, `15.9`).

#[derive(Serialize)]
struct Hello {
    system: String,
    protocol: &'static str,
}

#[derive(Serialize)]
struct BillLine<'a> {
    id: i64,
    date: String,
    #[serde(serialize_with = "serialize_decimal")]
    summ: Decimal,
    number: &'a str,
    customername: &'a str,
}

#[derive(Serialize)]
struct BillAnswer<'a> {
    id: i64,
    date: String,
    #[serde(serialize_with = "serialize_decimal")]
    summ: Decimal,
    number: &'a str,
    customer: BillCustomer<'a>,
    products: Vec<Product<'a>>,
    #[serde(serialize_with = "serialize_decimal")]
    prepayment: Decimal,
    #[serde(rename = "prepaymentEnable")]
    prepayment_enable: bool,
    /// The most the customer may pay with bonuses, only where the program caps the share.
    #[serde(
        rename = "maxbonuspayment",
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_optional_decimal"
    )]
    max_bonus_payment: Option<Decimal>,
}

fn serialize_optional_decimal<S: serde::Serializer>(
    value: &Option<Decimal>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serialize_decimal(value, s),
        None => s.serialize_none(),
    }
}

#[derive(Serialize)]
struct BillCustomer<'a> {
    id: i64,
    inn: &'static str,
    kpp: &'static str,
    reg: &'static str,
    name: &'a str,
    okpo: &'static str,
    fullname: &'a str,
    legalentity: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Product<'a> {
    id: i64,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(serialize_with = "serialize_decimal")]
    price: Decimal,
    #[serde(rename = "taxrate")]
    tax_rate: String,
    item_type: u8,
    #[serde(rename = "prodname")]
    prod_name: &'a str,
    #[serde(serialize_with = "serialize_decimal")]
    quantity: Decimal,
    #[serde(rename = "unitname")]
    unit_name: &'a str,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only the bill with this number (typed or scanned).
    pub number: Option<String>,
    /// `today`: only bills created today (local time).
    #[param(pattern = "^(today)?$")]
    pub date: Option<String>,
}

fn local_date(bill: &PosBill, zone: OrgTimeZone) -> String {
    Stamp::in_zone(bill.created_at, zone).local_str()
}

/// The open bills the cashier picks from, newest first.
#[utoipa::path(get, path = "/api/v2/list", tag = "POS", params(ListQuery),
    responses((status = 200, body = Vec<crate::openapi::pos_shapes::PosBillLine>)), security(("pos" = [])))]
async fn list(
    State(state): State<AppState>,
    Pos(pos): Pos,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let today = match query.date.as_deref() {
        None | Some("") => false,
        Some("today") => true,
        Some(_) => return Err(ApiError::invalid("date", "only `today` is supported")),
    };
    let mut conn = state.db.acquire().await?;
    let zone = bills::zone_of(&mut conn, pos.org_id).await?;
    let number = query
        .number
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    let found = bills::open_for_pos(&mut conn, pos.org_id, zone, number, today).await?;
    let lines: Vec<BillLine> = found
        .iter()
        .map(|b| BillLine {
            id: b.id,
            date: local_date(b, zone),
            summ: b.total,
            number: &b.number,
            customername: b.list_name(),
        })
        .collect();
    Ok(Json(lines).into_response())
}

/// An open bill with its lines, for the register to load.
#[utoipa::path(get, path = "/api/v2/bill/byid/{id}", tag = "POS", params(("id" = i64, Path)),
    responses((status = 200, body = crate::openapi::pos_shapes::PosBill)), security(("pos" = [])))]
async fn bill_by_id(
    State(state): State<AppState>,
    Pos(pos): Pos,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let mut conn = state.db.acquire().await?;
    let zone = bills::zone_of(&mut conn, pos.org_id).await?;
    let bill = bills::open_bill_for_pos(&mut conn, pos.org_id, id).await?;
    let products = bill
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| Product {
            id: item.product_id.unwrap_or(i64::try_from(i).unwrap_or(0) + 1),
            kind: "NORMAL",
            price: item.unit_price,
            tax_rate: item.tax_rate.map(|r| format!("{r}%")).unwrap_or_default(),
            item_type: 1,
            prod_name: &item.name,
            quantity: item.quantity,
            unit_name: item.unit.as_deref().unwrap_or_default(),
        })
        .collect();
    let answer = BillAnswer {
        id: bill.id,
        date: local_date(&bill, zone),
        summ: bill.total,
        number: &bill.number,
        customer: BillCustomer {
            id: bill.customer_id,
            inn: "",
            kpp: "",
            reg: "",
            name: &bill.customer_name,
            okpo: "",
            fullname: &bill.customer_name,
            legalentity: false,
        },
        products,
        prepayment: bill.bonus_payment,
        prepayment_enable: true,
        max_bonus_payment: bills::pos_max_bonus_payment(&mut conn, pos.org_id, bill.id).await?,
    };
    Ok(Json(answer).into_response())
}

/// How long a receipt may wait for the broker's confirm; the POS resends after 10 s.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// A receipt (or another event) from the Evotor cloud; 200 once the broker has stored it.
#[utoipa::path(post, path = "/api/v2/receipts", tag = "POS",
    request_body = crate::openapi::pos_shapes::ReceiptEvent,
    responses((status = 200, description = "stored; a resend is deduplicated")), security(("pos" = [])))]
async fn receipt(
    State(state): State<AppState>,
    Pos(pos): Pos,
    RawBody(body): RawBody,
) -> Result<StatusCode, ApiError> {
    let started = std::time::Instant::now();
    metrics::counter!("loyalty_receipts_received_total").increment(1);
    let answer = accept_receipt(&state, &pos, &body).await;
    match &answer {
        Ok(_) => metrics::counter!("loyalty_receipts_acknowledged_total").increment(1),
        Err(err) => metrics::counter!("loyalty_receipts_rejected_total", "status" => err.status().as_str().to_owned()).increment(1),
    }
    metrics::histogram!("loyalty_ingest_seconds").record(started.elapsed().as_secs_f64());
    answer
}

/// Checks the event and publishes it; the 200 comes only after the broker's confirm.
async fn accept_receipt(
    state: &AppState,
    pos: &Integration,
    body: &[u8],
) -> Result<StatusCode, ApiError> {
    let head: IncomingEvent = parse_json(body)?;
    tracing::Span::current().record("event", head.id.as_str());
    if head.event_type == RECEIPT_CREATED {
        let data = head
            .data
            .ok_or_else(|| ApiError::invalid("data", "missing field `data`"))?;
        parse_json::<Receipt>(data.get().as_bytes()).map_err(|err| match err {
            ApiError::Invalid { field, message } => {
                let field = if field == "body" {
                    "data".to_owned()
                } else {
                    format!("data.{field}")
                };
                ApiError::Invalid { field, message }
            }
            other => other,
        })?;
    }
    let payload = ReceiptMessage::encode_raw(pos.org_id, pos.id, chrono::Utc::now(), body);
    let properties = contract::receipt_properties(&head.id, pos.org_id);
    let queue = state.broker.topology().main(Stream::Receipts);
    let published = tokio::time::timeout(
        PUBLISH_TIMEOUT,
        state.broker.publish(&queue, &payload, properties),
    )
    .await;
    match published {
        Ok(Ok(())) => {
            // The worker's "receipt applied" is the receipt's one info line.
            tracing::debug!(org = pos.org_id, integration = pos.id, event = %head.id, "receipt accepted");
            Ok(StatusCode::OK)
        }
        Ok(Err(err)) => {
            tracing::warn!(event = %head.id, error = %err, "receipt not accepted: broker");
            Err(ApiError::unavailable(
                "the receipt could not be stored; send it again",
            ))
        }
        Err(_) => {
            tracing::warn!(event = %head.id, "receipt not accepted: broker confirm timed out");
            Err(ApiError::unavailable(
                "the receipt could not be stored in time; send it again",
            ))
        }
    }
}
