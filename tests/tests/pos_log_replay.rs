//! Every request of the real POS log (tests/fixtures/pos-log.json, a copy of
//! ../shared/seeds/pos-log.json) replayed against our stack, each answer compared with the logged
//! one byte for byte: key order, number texts (`17500`, `1107.36`, `15.9`) and stored names.
//!
//! The stack is set up with what the log's shops had: per integration an organization with its
//! customers (imported, so they keep their ids and names as stored) and an integration named as its
//! `hello` answers, and the open bills of its `list` and `bill/byid` answers created under the
//! shop's own ids and dates. So no per-run value appears in any answer and nothing is substituted:
//! the per-run values (organization ids, POS tokens) never reach an answer.

use std::collections::BTreeMap;

use e2e::{TestApp, pos_log};
use serde_json::{Value, json};

/// The integration's system name: its `hello` answer, or a name of ours when the log has none.
fn system_of(log: &[Value], integration: i64) -> String {
    log.iter()
        .find(|r| {
            r["integration"] == integration && r["direction"] == "response" && r["type"] == "HELLO"
        })
        .and_then(|r| r["json"]["system"].as_str())
        .map_or_else(|| format!("integration-{integration}"), str::to_owned)
}

/// One open bill as the log shows it: its list line, and its lines when `bill/byid` showed them.
struct LoggedBill {
    line: Value,
    full: Option<Value>,
}

fn bills_of(log: &[Value], integration: i64) -> BTreeMap<i64, LoggedBill> {
    let mut bills = BTreeMap::new();
    for row in log
        .iter()
        .filter(|r| r["integration"] == integration && r["direction"] == "response")
    {
        match row["type"].as_str() {
            Some("LIST") => {
                for line in row["json"].as_array().expect("list") {
                    let id = line["id"].as_i64().expect("bill id");
                    bills.entry(id).or_insert(LoggedBill {
                        line: line.clone(),
                        full: None,
                    });
                }
            }
            Some("BILL") => {
                let id = row["json"]["id"].as_i64().expect("bill id");
                bills
                    .entry(id)
                    .or_insert(LoggedBill {
                        line: Value::Null,
                        full: None,
                    })
                    .full = Some(row["json"].clone());
            }
            _ => {}
        }
    }
    bills
}

/// The customer of a bill: the id and stored name `bill/byid` shows, else one of ours under the
/// list's name.
fn customer_of(bill: &LoggedBill, next_id: &mut i64) -> (i64, String) {
    match &bill.full {
        Some(full) => (
            full["customer"]["id"].as_i64().expect("customer id"),
            full["customer"]["name"].as_str().expect("name").to_owned(),
        ),
        None => {
            *next_id += 1;
            (
                *next_id,
                bill.line["customername"].as_str().expect("name").to_owned(),
            )
        }
    }
}

/// Sets one integration's shop up; returns its POS token.
async fn shop(app: &TestApp, log: &[Value], integration: i64) -> String {
    let bills = bills_of(log, integration);
    let mut next_id = 0;
    let mut customers: BTreeMap<String, (i64, String)> = BTreeMap::new();
    let mut owners = BTreeMap::new();
    for (id, bill) in &bills {
        let (customer, name) = customer_of(bill, &mut next_id);
        let trimmed = name.trim().to_owned();
        let (customer, _) = customers.entry(trimmed).or_insert((customer, name)).clone();
        owners.insert(*id, customer);
    }
    // A legacy import keeps the customers' ids and their names exactly as stored.
    let mut document = json!({
        "organization_details": {"name": format!("Shop {integration}")},
        "bonus_program_settings": {
            "invoice_bonus_percentage": 2, "referral_promo_bonus": 50,
            "referrer_first_purchase_percentage": 5
        }
    });
    for (id, name) in customers.values() {
        document[id.to_string()] = json!({
            "id": id.to_string(), "first_name": name, "bonuses": 0, "debts": 0,
            "referral_bonuses": 0, "referral_code": format!("PROMO{id}")
        });
    }
    let (status, body) = app.post("/admin/v1/import", &document).await;
    assert_eq!(status, 201, "{body}");
    let org = body["id"].as_i64().expect("org id");
    let token = app.pos_token(org, &system_of(log, integration)).await;

    for (id, bill) in &bills {
        let source = bill.full.as_ref().unwrap_or(&bill.line);
        let items: Vec<Value> = match &bill.full {
            Some(full) => full["products"]
                .as_array()
                .expect("products")
                .iter()
                .map(|p| {
                    json!({
                        "name": p["prodname"], "quantity": p["quantity"], "unit_price": p["price"],
                        "unit": p["unitname"], "product_id": p["id"],
                        "tax_rate": p["taxrate"].as_str().expect("taxrate").trim_end_matches('%'),
                    })
                })
                .collect(),
            None => vec![json!({"name": "Заказ", "quantity": 1, "unit_price": source["summ"]})],
        };
        let (status, body) = app
            .post(
                &format!("/admin/v1/orgs/{org}/bills"),
                &json!({
                    "id": id, "date": source["date"], "number": source["number"],
                    "customer_id": owners[id], "items": items,
                }),
            )
            .await;
        assert_eq!(status, 201, "bill {id}: {body}");
        assert_eq!(body["id"], *id, "the shop's id is kept");
    }
    token
}

/// The request a logged row describes.
fn request(app: &TestApp, token: &str, row: &Value) -> reqwest::RequestBuilder {
    let get = &row["json"]["get"];
    let path = get["q"].as_str().expect("route");
    let http = reqwest::Client::new();
    match row["type"].as_str().expect("type") {
        "RECEIPT" => http
            .post(app.url(path))
            .bearer_auth(token)
            .json(&row["json"]["body"]),
        "LIST" => {
            let query: Vec<(&String, &Value)> = get
                .as_object()
                .expect("get")
                .iter()
                .filter(|(k, _)| *k != "q")
                .collect();
            let query: Vec<(&str, &str)> = query
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str().expect("query value")))
                .collect();
            http.get(app.url(path)).query(&query).bearer_auth(token)
        }
        _ => http.get(app.url(path)).bearer_auth(token),
    }
}

#[tokio::test]
async fn every_logged_request_gets_the_logged_answer_byte_for_byte() {
    let app = TestApp::spawn().await;
    let log = pos_log();
    let log = log.as_array().expect("rows");
    let mut tokens = BTreeMap::new();
    for integration in [120, 148, 171] {
        tokens.insert(integration, shop(&app, log, integration).await);
    }

    let mut answered = vec![false; log.len()];
    let mut replayed = 0;
    for (i, row) in log.iter().enumerate() {
        if row["direction"] != "request" {
            continue;
        }
        let integration = row["integration"].as_i64().expect("integration");
        let (j, logged) = log
            .iter()
            .enumerate()
            .skip(i + 1)
            .find(|(j, r)| {
                !answered[*j]
                    && r["direction"] == "response"
                    && r["integration"] == row["integration"]
                    && r["type"] == row["type"]
            })
            .expect("every request has its logged answer");
        answered[j] = true;
        let response = request(&app, &tokens[&integration], row)
            .send()
            .await
            .expect("request reaches ingest");
        let status = response.status().as_u16();
        let ours = response.text().await.expect("body");
        // The log writes an empty answer (a receipt's) as null.
        let expected = match &logged["json"] {
            Value::Null => String::new(),
            logged => serde_json::to_string(logged).expect("serializes"),
        };
        assert_eq!(
            (status, ours.as_str()),
            (200, expected.as_str()),
            "row {i} ({} {})",
            row["type"],
            row["time"]
        );
        replayed += 1;
    }
    assert_eq!(replayed, 10, "every request of the log");
}

#[tokio::test]
async fn a_bill_keeps_the_shops_id_and_date_and_its_id_is_unique_per_organization() {
    let app = TestApp::spawn().await;
    let first = app.org().await;
    let second = app.org().await;
    let bill = |customer: &str| {
        json!({"id": 47827, "date": "2026-02-27 12:38:41", "customer_id": customer,
               "items": [{"name": "Цзинь Цзюнь Мэй", "quantity": 500, "unit_price": 19.1}]})
    };
    let alex = app.customer(first, "Alex").await;
    let (status, created) = app
        .post(&format!("/admin/v1/orgs/{first}/bills"), &bill(&alex))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created, json!({"id": 47827, "number": "47827"}));
    let (_, read) = app
        .get(&format!("/admin/v1/orgs/{first}/bills/47827"))
        .await;
    assert_eq!(read["date"], "2026-02-27 12:38:41");
    assert_eq!(read["total"].to_string(), "9550");

    let mut same_id = bill(&alex);
    same_id["number"] = json!("47827-CRM");
    let (status, body) = app
        .post(&format!("/admin/v1/orgs/{first}/bills"), &same_id)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("bill_id_taken")),
        "{body}"
    );
    let bob = app.customer(second, "Bob").await;
    let (status, _) = app
        .post(&format!("/admin/v1/orgs/{second}/bills"), &bill(&bob))
        .await;
    assert_eq!(status, 201, "another organization may hold the same id");

    let (status, body) = app
        .post(
            &format!("/admin/v1/orgs/{first}/bills"),
            &json!({"date": "27.02.2026", "customer_id": alex,
                    "items": [{"name": "x", "quantity": 1, "unit_price": 1}]}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("date"))
    );
    // Without an id, a new one is given, never one the shop's bills hold.
    let (status, created) = app
        .post(
            &format!("/admin/v1/orgs/{first}/bills"),
            &json!({"customer_id": alex, "items": [{"name": "x", "quantity": 1, "unit_price": 1}]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_ne!(created["id"], 47827);
}
