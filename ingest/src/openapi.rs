//! The OpenAPI document of every route, served at `/openapi.json`: the POS protocol, the Mini App
//! API, the operator API and the health probes. Each handler's annotation states its own answers;
//! the answers every route shares by construction (a body that is not JSON, missing credentials,
//! the database away…) are added here by one rule each, so the document says what the server does.

use std::sync::LazyLock;

use axum::routing::get;
use axum::{Json, Router};
use loyalty::orgs::OrgChanges;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use crate::AppState;
use crate::admin::{access, audit, bills, customers, legacy, ops, orgs, receipts, reports, staff};
use crate::{health, miniapp, pos};
use loyalty::schema::{NO_NUL, NOT_BLANK};

/// What `/readyz` answers (`health.rs` writes it with `json!`).
#[derive(utoipa::ToSchema)]
pub struct Readiness {
    #[schema(pattern = "^(ready|unavailable)$")]
    pub status: String,
    pub postgres: bool,
    pub rabbitmq: bool,
}

/// What the Mini App's `me` answers: the customer in the legacy shape, with the shop's contacts
/// and bonus settings and where the customer stands (`miniapp.rs` adds them to the customer's JSON).
#[derive(Serialize, utoipa::ToSchema)]
pub struct MiniAppProfile {
    #[serde(flatten)]
    pub customer: loyalty::legacy::LegacyCustomer,
    pub organization: MiniAppOrganization,
    pub bonus_program_settings: loyalty::rules::BonusProgramSettings,
    #[serde(flatten)]
    pub standing: loyalty::standing::Standing,
    /// The link that opens the app with the customer's promo code (to share with friends); null
    /// while the bot's username is unknown.
    pub share_link: Option<String>,
    /// Whether the bot may write to the customer; when false the app asks for write access.
    pub can_message: bool,
    /// `combined_history` holds the newest 50 movements; when there are more, the `before` of
    /// `…/me/history` that goes on where it stops, else null.
    pub history_next_before: Option<String>,
    /// The caller's role among the shop's staff; null for customers.
    #[schema(pattern = "^(owner|cashier)$")]
    pub staff_role: Option<String>,
    /// Only on the first visit through a link whose `start_param` is a promo code.
    #[schema(nullable = false)]
    pub referral: Option<miniapp::Referral>,
}

/// The shop as the Mini App shows it: its contacts and how amounts are written.
#[derive(Serialize, utoipa::ToSchema)]
pub struct MiniAppOrganization {
    #[serde(flatten)]
    pub details: loyalty::orgs::OrgDetails,
    /// Shown after amounts (₸, сом, ₽…).
    pub currency_symbol: String,
}

/// What creating an organization takes: the fields of a change, with the name required.
pub struct NewOrg;

impl utoipa::PartialSchema for NewOrg {
    fn schema() -> RefOr<Schema> {
        use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Type};
        AllOfBuilder::new()
            .item(Ref::from_schema_name(OrgChanges::name()))
            .item(
                ObjectBuilder::new()
                    .property("name", ObjectBuilder::new().schema_type(Type::String))
                    .required("name"),
            )
            .into()
    }
}

impl utoipa::ToSchema for NewOrg {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((OrgChanges::name().into_owned(), OrgChanges::schema()));
        OrgChanges::schemas(schemas);
    }
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme("admin", bearer("ADMIN_TOKEN"));
        components.add_security_scheme(
            "pos",
            bearer("A POS integration's token (POST /admin/v1/orgs/{org}/integrations)"),
        );
        components.add_security_scheme(
            "tma",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`tma <initData>`: the Mini App's init data as Telegram signed it for the \
                 organization's bot, at most MINIAPP_MAX_AGE old",
            ))),
        );
        components.add_security_scheme(
            "api_key",
            bearer(
                "`lk_…`: an organization's API key (POST /admin/v1/orgs/{org}/api-keys), on that \
                 organization's routes its role allows (`x-roles`)",
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Loyalty program", description = "The cash registers' protocol (`/api/v2`, Bearer POS token), the customers' Mini App API (`/app/v1`, `tma <initData>`), the operator API (`/admin/v1`, Bearer ADMIN_TOKEN) and the health probes. Money is a JSON number or string with at most 2 decimals, at most 10^12; Idempotency-Key is honoured by every operator POST that moves money. Every error is `{\"error\": {\"code\", \"message\", \"field\"?}}`."),
    paths(
        health::healthz, health::readyz,
        pos::hello, pos::list, pos::bill_by_id, pos::receipt,
        miniapp::me, miniapp::promo, miniapp::history, miniapp::birth_date,
        miniapp::code_svg, miniapp::write_access,
        orgs::create_org, orgs::get_org, orgs::update_org, orgs::create_integration, orgs::set_imported_expiry,
        customers::create_customer, customers::search_customers, customers::get_customer,
        customers::enter_promo, customers::move_bonuses, customers::move_debt, customers::merge_customer,
        customers::set_birth_date,
        bills::create_bill, bills::list_bills, bills::get_bill, bills::cancel_bill,
        legacy::import, legacy::export,
        receipts::list_receipts, receipts::attach_receipt, receipts::list_notifications,
        ops::summary, ops::queues, ops::dead_letters, ops::replay, receipts::ops_receipts, receipts::ops_notifications,
        reports::liability, reports::activity,
        staff::list_staff, staff::add_staff, staff::change_staff, staff::remove_staff,
        staff::list_keys, staff::create_key, staff::revoke_key, audit::trail,
    ),
    modifiers(&SecuritySchemes)
)]
pub struct ApiDoc;

/// The document as served: utoipa's, with the shared answers, the text rule and the links added.
pub static DOCUMENT: LazyLock<Value> = LazyLock::new(|| {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|err| {
        // Serializing the derived document cannot fail; say so loudly if it ever does.
        json!({ "openapi": "3.1.0", "info": { "title": format!("document error: {err}"), "version": "0" }, "paths": {} })
    });
    refine(&mut doc);
    add_access(&mut doc);
    add_shared_answers(&mut doc);
    refuse_nul_in_text(&mut doc);
    add_any_json(&mut doc);
    add_links(&mut doc);
    doc
});

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(&*DOCUMENT) }))
}

fn error_answer(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } }
    })
}

/// What the derives cannot say: the values handlers check against a list, and a rule across fields.
fn refine(doc: &mut Value) {
    let bill_statuses = loyalty::bills::BillStatus::ALL.map(loyalty::bills::BillStatus::as_str);
    let streams = ["receipts", "notifications"];
    let listed: [(&str, &str, &[&str]); 6] = [
        ("list_receipts", "status", &receipts::RECEIPT_STATUSES),
        ("ops_receipts", "status", &receipts::RECEIPT_STATUSES),
        (
            "list_notifications",
            "status",
            &receipts::NOTIFICATION_STATUSES,
        ),
        (
            "ops_notifications",
            "status",
            &receipts::NOTIFICATION_STATUSES,
        ),
        ("list_bills", "status", &bill_statuses),
        ("dead_letters", "queue", &streams),
    ];
    for item in doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|p| p.values_mut())
    {
        for operation in item
            .as_object_mut()
            .into_iter()
            .flat_map(|o| o.values_mut())
        {
            let id = operation["operationId"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let parameters = operation
                .get_mut("parameters")
                .and_then(Value::as_array_mut);
            for parameter in parameters.into_iter().flatten() {
                // A query parameter is absent or has a value; it is never null.
                if let Some(types) = parameter["schema"]["type"].as_array() {
                    let types: Vec<Value> =
                        types.iter().filter(|t| *t != "null").cloned().collect();
                    if let [single] = types.as_slice() {
                        parameter["schema"]["type"] = single.clone();
                    }
                }
                let name = parameter["name"].as_str().unwrap_or_default();
                if let Some((_, _, values)) = listed.iter().find(|l| l.0 == id && l.1 == name) {
                    parameter["schema"] = json!({ "type": "string", "enum": values });
                }
            }
        }
    }
    let schemas = &mut doc["components"]["schemas"];
    schemas["ReplayRequest"]["properties"]["queue"] = json!({ "type": "string", "enum": streams });
    // A bill is paid, and an operator moves bonuses, from the main or referral wallet, never debt.
    schemas["BonusRequest"]["properties"]["wallet"] =
        json!({ "type": ["string", "null"], "enum": ["main", "referral", null] });
    schemas["BonusPayment"]["properties"]["wallet"] =
        json!({ "type": "string", "enum": ["main", "referral"], "default": "main" });
    // A customer needs something to be known by.
    schemas["NewCustomer"]["anyOf"] = json!([
        { "required": ["first_name"], "properties": { "first_name": { "type": "string", "pattern": r"\S" } } },
        { "required": ["phone_number"], "properties": { "phone_number": { "type": "string" } } },
        { "required": ["telegram_id"], "properties": { "telegram_id": { "type": "integer" } } },
    ]);
}

/// Who may call each operator route, from the one table the server checks
/// (`admin::access::RULES`): the organization routes its roles reach take an API key or a staff
/// member's init data besides the platform's token, and name the roles (`x-roles`); every
/// operator route may answer 403 to a caller it is not for.
fn add_access(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        if !path.starts_with("/admin/v1/") {
            continue;
        }
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in item.iter_mut() {
            let roles = axum::http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .ok()
                .and_then(|m| access::rule_of(&m, path))
                .map_or(&[][..], |rule| rule.roles);
            operation["x-roles"] = json!(roles.iter().map(|r| r.as_str()).collect::<Vec<_>>());
            operation["security"] = if roles.is_empty() {
                json!([{ "admin": [] }])
            } else {
                json!([{ "admin": [] }, { "api_key": [] }, { "tma": [] }])
            };
            let description = if roles.is_empty() {
                "the platform's route: an organization's key or staff may not call it"
            } else {
                "another organization's route, or a role `x-roles` does not name (a Telegram \
                 user who is not the organization's staff, too)"
            };
            if operation["responses"].get("403").is_none() {
                operation["responses"]["403"] = error_answer(description);
            }
            if !roles.is_empty() && operation["responses"].get("429").is_none() {
                operation["responses"]["429"] = error_answer(
                    "a staff member over MINIAPP_RATE requests a second (bursts of MINIAPP_BURST), \
                     counted with their Mini App requests",
                );
            }
        }
    }
}

/// The answers that follow from how a route is built rather than from what it does.
fn add_shared_answers(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for operation in item.values_mut() {
            let has_body = operation.get("requestBody").is_some();
            let params = operation["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let in_path = params.iter().any(|p| p["in"] == "path");
            let in_query = params.iter().any(|p| p["in"] == "query");
            let secured = operation["security"]
                .as_array()
                .is_some_and(|s| !s.is_empty());
            let mut shared = Vec::new();
            if has_body {
                shared.push(("400", "the body is not JSON"));
                shared.push(("413", "the body is larger than the route's limit"));
            }
            if has_body || in_query {
                shared.push(("422", "a value the route does not accept; `field` names it"));
            }
            if secured {
                shared.push(("401", "missing or invalid credentials"));
            }
            // The Mini App's only path id is its organization: an unknown one is the same 401 as a
            // bad signature, so ids cannot be probed.
            if in_path && !path.starts_with("/app/") {
                shared.push(("404", "nothing with this id (or a malformed id)"));
            }
            if path.starts_with("/app/") {
                shared.push((
                    "429",
                    "more than MINIAPP_RATE requests a second (default 5; bursts of MINIAPP_BURST, default 20) \
                     claiming one Telegram user, answered before the init data is checked",
                ));
            }
            if path != "/healthz" {
                shared.push((
                    "503",
                    "PostgreSQL or RabbitMQ is unavailable; retry shortly",
                ));
            }
            let responses = &mut operation["responses"];
            for (status, description) in shared {
                if responses.get(status).is_none() {
                    responses[status] = error_answer(description);
                }
            }
        }
    }
}

/// PostgreSQL cannot store U+0000, and every text the API takes ends up there: a NUL anywhere is
/// refused (422). Every string without a pattern of its own says so, so do the keys of every object
/// open to keys of the client's choosing, and `\S` (not blank) is
/// spelled out as the white space `str::trim` knows.
fn refuse_nul_in_text(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let is_string = match map.get("type") {
                Some(Value::String(t)) => t == "string",
                Some(Value::Array(types)) => types.iter().any(|t| t == "string"),
                _ => false,
            };
            let constrained = ["pattern", "enum", "const", "format"]
                .iter()
                .any(|k| map.contains_key(*k));
            if is_string && map.get("pattern").is_some_and(|p| p == r"\S") {
                map.insert("pattern".into(), json!(NOT_BLANK));
            } else if is_string && !constrained {
                map.insert("pattern".into(), json!(NO_NUL));
            }
            // An object's keys are text too, where it takes keys of the client's choosing.
            let is_object = map.get("type").is_some_and(|t| t == "object")
                || map.contains_key("properties")
                || map.contains_key("additionalProperties");
            let closed = map.get("additionalProperties") == Some(&Value::Bool(false));
            if is_object && !closed && !map.contains_key("propertyNames") {
                map.insert("propertyNames".into(), json!({ "pattern": NO_NUL }));
            }
            // What a client may put there, and any property documented as any JSON, is JSON
            // without a NUL, all the way down.
            if is_object
                && matches!(
                    map.get("additionalProperties"),
                    None | Some(Value::Bool(true))
                )
            {
                map.insert(
                    "additionalProperties".into(),
                    json!({ "$ref": ANY_JSON_REF }),
                );
            }
            if let Some(Value::Object(properties)) = map.get_mut("properties") {
                for property in properties.values_mut() {
                    if is_any_json(property) {
                        property["$ref"] = json!(ANY_JSON_REF);
                    }
                }
            }
            map.values_mut().for_each(refuse_nul_in_text);
        }
        Value::Array(items) => items.iter_mut().for_each(refuse_nul_in_text),
        _ => {}
    }
}

const ANY_JSON_REF: &str = "#/components/schemas/AnyJson";

/// A property's schema that admits any JSON value (`serde_json::Value`).
fn is_any_json(schema: &Value) -> bool {
    const SHAPES: [&str; 9] = [
        "type",
        "$ref",
        "anyOf",
        "oneOf",
        "allOf",
        "enum",
        "const",
        "properties",
        "items",
    ];
    schema
        .as_object()
        .is_some_and(|map| !SHAPES.iter().any(|k| map.contains_key(*k)))
}

/// Any JSON value with no U+0000 in a text or a key, at any depth.
fn add_any_json(doc: &mut Value) {
    doc["components"]["schemas"]["AnyJson"] = json!({
        "description": "Any JSON value without U+0000 in its texts and keys, nested at most 32 levels.",
        "anyOf": [
            { "type": "string", "pattern": NO_NUL },
            { "type": ["number", "boolean", "null"] },
            { "type": "array", "items": { "$ref": ANY_JSON_REF } },
            { "type": "object", "propertyNames": { "pattern": NO_NUL },
              "additionalProperties": { "$ref": ANY_JSON_REF } }
        ]
    });
}

/// The created thing's id, and the organization of the request that created it.
const NEW_ID: &str = "$response.body#/id";
const SAME_ORG: &str = "$request.path.org";

/// Where a created resource's id is used next, so a stateful run goes on from what it created: the
/// creating operation (its 201), the parameters its answer gives, and the operations that take them
/// (each link is named after the operation it leads to).
type Links = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
);
const LINKS: &[Links] = &[
    (
        "create_org",
        &[("org", NEW_ID)],
        &[
            "get_org",
            "update_org",
            "create_integration",
            "create_customer",
            "search_customers",
            "create_bill",
            "list_bills",
            "list_receipts",
            "list_notifications",
            "export",
        ],
    ),
    ("import", &[("org", NEW_ID)], &["get_org", "export"]),
    (
        "create_customer",
        &[("org", SAME_ORG), ("id", NEW_ID)],
        &[
            "get_customer",
            "enter_promo",
            "move_bonuses",
            "move_debt",
            "merge_customer",
        ],
    ),
    (
        "create_bill",
        &[("org", SAME_ORG), ("id", NEW_ID)],
        &["get_bill", "cancel_bill"],
    ),
];

fn add_links(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for item in paths.values_mut().filter_map(Value::as_object_mut) {
        for operation in item.values_mut() {
            let id = operation["operationId"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            for (_, parameters, targets) in LINKS.iter().filter(|l| l.0 == id) {
                let parameters: serde_json::Map<String, Value> = parameters
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), json!(v)))
                    .collect();
                for target in *targets {
                    operation["responses"]["201"]["links"][*target] =
                        json!({ "operationId": target, "parameters": parameters });
                }
            }
        }
    }
}

/// The shapes of the cash registers' protocol, as `pos.rs` writes and reads them (the logged
/// traffic's; `pos.rs` builds its answers with `json!`, so these exist for the document only).
pub mod pos_shapes {
    use loyalty::money::{DecimalSchema, Lowest};
    use loyalty::schema::NOT_BLANK;
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::schema::{OneOfBuilder, Schema};
    use utoipa::openapi::{Ref, RefOr};
    use utoipa::{PartialSchema, ToSchema};

    #[derive(ToSchema)]
    pub struct PosHello {
        /// The integration's system name.
        pub system: String,
        /// Always 0.1.0.
        pub protocol: String,
    }

    /// An open bill in the cashier's picker.
    #[derive(ToSchema)]
    pub struct PosBillLine {
        pub id: i64,
        /// Local time, `YYYY-MM-DD HH:MM:SS`.
        pub date: String,
        pub summ: f64,
        pub number: String,
        pub customername: String,
    }

    #[derive(ToSchema)]
    pub struct PosBill {
        pub id: i64,
        pub date: String,
        pub summ: f64,
        pub number: String,
        pub customer: PosCustomer,
        pub products: Vec<PosProduct>,
        /// The bonuses held for this bill.
        pub prepayment: f64,
        #[schema(rename = "prepaymentEnable")]
        pub prepayment_enable: bool,
        /// The most the customer may pay on this bill with bonuses; present only where the
        /// organization's `max_bonus_payment_percentage` is below 100.
        #[schema(rename = "maxbonuspayment")]
        pub max_bonus_payment: Option<f64>,
    }

    #[derive(ToSchema)]
    pub struct PosCustomer {
        pub id: i64,
        pub inn: String,
        pub kpp: String,
        pub reg: String,
        pub okpo: String,
        pub name: String,
        pub fullname: String,
        pub legalentity: bool,
    }

    #[derive(ToSchema)]
    pub struct PosProduct {
        pub id: i64,
        #[schema(rename = "type")]
        pub kind: String,
        pub price: f64,
        /// `20%`, or empty.
        pub taxrate: String,
        #[schema(rename = "itemType")]
        pub item_type: i64,
        pub prodname: String,
        pub quantity: f64,
        pub unitname: String,
    }

    /// An Evotor webhook event, `POST /api/v2/receipts`. Receipts are checked at once; other events
    /// are stored as they come.
    pub struct ReceiptEvent;

    impl PartialSchema for ReceiptEvent {
        fn schema() -> RefOr<Schema> {
            OneOfBuilder::new()
                .item(Ref::from_schema_name(PosReceiptCreated::name()))
                .item(Ref::from_schema_name(PosOtherEvent::name()))
                .into()
        }
    }

    impl ToSchema for ReceiptEvent {
        fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
            for (name, schema) in [
                (PosReceiptCreated::name(), PosReceiptCreated::schema()),
                (PosOtherEvent::name(), PosOtherEvent::schema()),
            ] {
                schemas.push((name.into_owned(), schema));
            }
            PosReceiptCreated::schemas(schemas);
        }
    }

    /// `ReceiptCreated`; `timestamp`, `version`, `userId` and any other field are kept as sent.
    #[derive(ToSchema)]
    pub struct PosReceiptCreated {
        /// The event id: a resend carries the same one.
        #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
        pub id: String,
        #[schema(rename = "type", pattern = "^ReceiptCreated$")]
        pub kind: String,
        pub data: PosReceipt,
    }

    /// Any other event.
    #[derive(ToSchema)]
    pub struct PosOtherEvent {
        #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
        pub id: String,
        #[schema(rename = "type", schema_with = other_event_type)]
        pub kind: String,
        #[schema(value_type = Option<Value>)]
        pub data: Option<serde_json::Value>,
    }

    /// The receipt; `deviceId`, `storeId`, `shiftId` and any other field are kept as sent.
    #[derive(ToSchema)]
    pub struct PosReceipt {
        #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
        pub id: String,
        /// SELL accrues, PAYBACK reverses; BUY, BUYBACK and CORRECTION_… are stored and flagged.
        #[schema(rename = "type", min_length = 1, max_length = 200, pattern = r"\S")]
        pub kind: String,
        pub items: Vec<PosReceiptItem>,
        #[schema(rename = "totalAmount", schema_with = signed_money)]
        pub total_amount: f64,
        #[schema(required = false)]
        pub extras: PosExtras,
        /// UTC, ISO 8601.
        #[schema(rename = "dateTime")]
        pub date_time: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct PosReceiptItem {
        #[schema(required = false)]
        pub name: String,
        #[schema(schema_with = quantity)]
        pub quantity: f64,
        #[schema(schema_with = signed_money)]
        pub price: f64,
        #[schema(rename = "sumPrice", schema_with = signed_money)]
        pub sum_price: f64,
    }

    /// What the terminal app adds; any other field is kept as sent.
    #[derive(ToSchema)]
    pub struct PosExtras {
        /// The bill this sale pays (string or number).
        #[schema(rename = "billId", value_type = Option<Value>)]
        pub bill_id: Option<serde_json::Value>,
    }

    /// Any event type but `ReceiptCreated`, not blank.
    fn other_event_type() -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(200))
            .pattern(Some(format!(
                "^(?!ReceiptCreated$){}",
                NOT_BLANK.trim_start_matches('^')
            )))
    }

    fn signed_money() -> RefOr<Schema> {
        DecimalSchema::money(Lowest::MinusMax).schema(
            "An amount with at most 2 decimals within ±10^12, positive or (refunds) negative.",
        )
    }

    fn quantity() -> RefOr<Schema> {
        DecimalSchema {
            lowest: Lowest::MinusMax,
            max: 1_000_000_000_000,
            places: Some(loyalty::receipts::QUANTITY_PLACES),
        }
        .schema("A quantity within ±10^12, with at most 6 decimals.")
    }
}
