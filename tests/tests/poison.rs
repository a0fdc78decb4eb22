//! What the real world sends: a receipt that can never apply (an absurd amount, a NUL, JSON nested
//! too deep) or a bug that panics while applying one. Each such receipt dies alone, with its row
//! and its reason; the receipts beside it are applied within seconds; amounts are read exactly and
//! bounded where they enter; nothing a client sends panics a service.

use std::time::{Duration, Instant};

use e2e::{TestApp, legacy_export, receipt_event};
use loyalty::queue::Stream;
use serde_json::{Value, json};

/// An amount beyond any cap, just inside `Decimal`'s range: 2 % of it overflows.
const HUGE: &str = "70000000000000000000000000000";

/// The value of a JSON number exactly as written (serde_json keeps its text).
fn number(text: &str) -> Value {
    serde_json::from_str(text).expect("a JSON number")
}

/// A sale of one item of 100 whose `totalAmount` alone is `total`.
fn sale_totalling(event_id: &str, bill: Option<i64>, total: &str) -> Value {
    let mut event = receipt_event(event_id, &event_id.replace("ev-", "rc-"), bill, "100");
    event["data"]["totalAmount"] = number(total);
    event
}

struct Batch {
    org: i64,
    customer: String,
    poison_bill: i64,
}

/// 101 open bills of one customer, and their receipts published straight to the receipts queue,
/// the one paying bill 50 made by `poison`; all of them wait in the queue before a worker starts,
/// so they are delivered together and share a batch.
async fn hundred_receipts_and_one(app: &TestApp, poison: impl Fn(i64) -> Value) -> Batch {
    let org = app.org().await;
    let customer = app.customer(org, "Alex").await;
    let mut poison_bill = 0;
    for i in 0..101 {
        let bill = app.open_bill(org, &customer, 100).await;
        let event = if i == 50 {
            poison_bill = bill;
            poison(bill)
        } else {
            receipt_event(&format!("ev-{i}"), &format!("rc-{i}"), Some(bill), "100")
        };
        let id = event["id"].as_str().expect("event id").to_owned();
        let body = serde_json::to_vec(&event).expect("json");
        app.publish_raw_receipt(org, &id, &body).await;
    }
    let main = app.state.broker.topology().main(Stream::Receipts);
    app.wait_queue_depth(&main, 101).await;
    Batch {
        org,
        customer,
        poison_bill,
    }
}

/// Waits until the 100 good receipts are applied; returns how long it took.
async fn hundred_applied(app: &TestApp, org: i64, started: Instant) -> Duration {
    let deadline = started + Duration::from_secs(20);
    while app.processed(org).await < 100 {
        assert!(
            Instant::now() < deadline,
            "only {} of the 100 good receipts applied after 20 s",
            app.processed(org).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// The poison's end: dead with `reason`, alone in the dead-letter queue, its bill still open, and
/// the customer credited for exactly the 100 good receipts.
async fn assert_dead_alone(app: &TestApp, batch: &Batch, reason: &str) {
    let dead = app.wait_receipt(batch.org, "ev-poison", "dead").await;
    let error = dead["last_error"].as_str().expect("last_error");
    assert!(error.contains(reason), "{dead}");
    let queue = app.state.broker.topology().dead(Stream::Receipts);
    app.wait_queue_depth(&queue, 1).await;
    let main = app.state.broker.topology().main(Stream::Receipts);
    app.wait_queue_depth(&main, 0).await;
    let (_, bill) = app
        .get(&format!(
            "/admin/v1/orgs/{}/bills/{}",
            batch.org, batch.poison_bill
        ))
        .await;
    assert_eq!(bill["status"], "open", "the poison changed nothing");
    let (_, alex) = app
        .get(&format!(
            "/admin/v1/orgs/{}/customers/{}",
            batch.org, batch.customer
        ))
        .await;
    assert_eq!(alex["bonuses"], json!(200), "2 % of 100, a hundred times");
}

#[tokio::test]
async fn an_absurd_total_dies_alone_and_the_hundred_receipts_in_its_batch_apply_within_seconds() {
    let app = TestApp::spawn().await;
    let batch =
        hundred_receipts_and_one(&app, |bill| sale_totalling("ev-poison", Some(bill), HUGE)).await;
    let started = Instant::now();
    let _worker = app.run_worker(
        workers::Worker::new(app.db.pool.clone(), app.state.broker.clone()),
        1,
        250,
    );
    let took = hundred_applied(&app, batch.org, started).await;
    eprintln!("100 good receipts applied {took:?} after the worker started");
    assert_dead_alone(&app, &batch, "data.totalAmount").await;
}

#[tokio::test]
async fn a_panic_in_the_apply_step_kills_only_its_receipt_and_the_hundred_beside_it_apply() {
    let app = TestApp::spawn().await;
    let batch = hundred_receipts_and_one(&app, |bill| {
        receipt_event("ev-poison", "rc-poison", Some(bill), "100")
    })
    .await;
    let worker = workers::Worker::new(app.db.pool.clone(), app.state.broker.clone())
        .panicking_on(|message| message.event_id() == "ev-poison");
    let started = Instant::now();
    let _worker = app.run_worker(worker, 1, 250);
    let took = hundred_applied(&app, batch.org, started).await;
    eprintln!("100 good receipts applied {took:?} after the worker started");
    assert_dead_alone(&app, &batch, "panic: injected fault applying ev-poison").await;
}

#[tokio::test]
async fn receipts_with_a_nul_in_an_item_name_or_event_id_die_with_a_row_saying_why() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let mut named = receipt_event("ev-nul-name", "rc-nul-name", None, "100");
    named["data"]["items"][0]["name"] = json!("Tea\u{0}");
    let numbered = receipt_event("ev-\u{0}-nul", "rc-nul-id", None, "100");
    for event in [&named, &numbered] {
        let id = event["id"].as_str().expect("id");
        app.publish_raw_receipt(org, id, &serde_json::to_vec(event).expect("json"))
            .await;
    }
    let _worker = app.start_worker();
    // PostgreSQL refuses NUL in text: the event id is stored with U+FFFD in its place.
    for id in ["ev-nul-name", "ev-\u{FFFD}-nul"] {
        let dead = app.wait_receipt(org, id, "dead").await;
        assert!(
            dead["last_error"].as_str().expect("error").contains("NUL"),
            "{dead}"
        );
        assert_eq!(dead["attempts"], 1, "refused at once, not retried: {dead}");
    }
    let queue = app.state.broker.topology().dead(Stream::Receipts);
    app.wait_queue_depth(&queue, 2).await;
}

#[tokio::test]
async fn a_message_nested_too_deep_to_read_dies_with_a_row_built_from_its_headers() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let event =
        serde_json::to_string(&receipt_event("ev-deep", "rc-deep", None, "100")).expect("json");
    let note = format!("{}{}", "[".repeat(130), "]".repeat(130));
    let deep = event.replacen("\"extras\":{", &format!("\"extras\":{{\"note\":{note},"), 1);
    assert_ne!(deep, event, "the note is in extras");
    app.publish_raw_receipt(org, "ev-deep", deep.as_bytes())
        .await;
    let _worker = app.start_worker();
    let dead = app.wait_receipt(org, "ev-deep", "dead").await;
    assert!(
        dead["last_error"]
            .as_str()
            .expect("error")
            .contains("recursion limit"),
        "{dead}"
    );
    let payload: Value = sqlx::query_scalar(
        "select payload from receipts where org_id = $1 and event_id = 'ev-deep'",
    )
    .bind(org)
    .fetch_one(&app.db.pool)
    .await
    .expect("row");
    assert!(
        payload
            .as_str()
            .is_some_and(|text| text.contains("\"id\":\"ev-deep\"")),
        "the body kept as text: {payload}"
    );
    let queue = app.state.broker.topology().dead(Stream::Receipts);
    app.wait_queue_depth(&queue, 1).await;
}

#[tokio::test]
async fn receipt_amounts_are_read_exactly_and_bounded_naming_the_field() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let token = app.pos_token(org, "shop").await;
    let refused = |event: Value, field: &'static str| {
        let (app, token) = (&app, &token);
        async move {
            let (status, body) = app.post_receipt(token, &event).await;
            assert_eq!(
                (status, body["error"]["field"].as_str()),
                (422, Some(field)),
                "{body}"
            );
        }
    };
    // As floats these are 100 and 10: read exactly, they have more than 2 decimals.
    refused(
        sale_totalling("ev-1", None, "99.99999999999999999"),
        "data.totalAmount",
    )
    .await;
    let mut priced = receipt_event("ev-2", "rc-2", None, "10");
    priced["data"]["items"][0]["price"] = number("10.0000000000000001");
    refused(priced, "data.items[0].price").await;
    refused(sale_totalling("ev-3", None, HUGE), "data.totalAmount").await;
    let mut many = receipt_event("ev-4", "rc-4", None, "10");
    many["data"]["items"][0]["quantity"] = number("10000000000000");
    refused(many, "data.items[0].quantity").await;
    let mut summed = receipt_event("ev-5", "rc-5", None, "10");
    summed["data"]["items"][0]["sumPrice"] = number("-1e13");
    refused(summed, "data.items[0].sumPrice").await;
    let (status, body) = app
        .post_receipt(&token, &receipt_event("ev-6", "rc-6", None, "99.99"))
        .await;
    assert_eq!(status, 200, "an exact amount is accepted: {body}");
}

#[tokio::test]
async fn bill_amounts_are_read_exactly_and_the_cap_applies_to_lines_and_totals() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let customer = app.customer(org, "Alex").await;
    let path = format!("/admin/v1/orgs/{org}/bills");
    let item = |quantity: &str, price: &str| json!({"name": "x", "quantity": number(quantity), "unit_price": number(price)});
    for (items, field) in [
        (
            vec![item("1", "10.0000000000000001")],
            "items[0].unit_price",
        ),
        (vec![item("1000000000000", "1000000000000")], "items[0]"),
        (
            vec![item("1", "900000000000"), item("1", "900000000000")],
            "items",
        ),
    ] {
        let (status, body) = app
            .post(&path, &json!({"customer_id": customer, "items": items}))
            .await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (422, Some(field)),
            "{body}"
        );
    }
    let token = app.pos_token(org, "shop").await;
    let (_, open) = app.pos_get(&token, "/api/v2/list").await;
    assert_eq!(open, json!([]), "no bill was created");
    let (status, body) = app
        .post(
            &path,
            &json!({"customer_id": customer, "items": [item("1", "1000000000000")]}),
        )
        .await;
    assert_eq!(status, 201, "the cap itself is allowed: {body}");
}

#[tokio::test]
async fn attaching_a_stored_sale_beyond_range_answers_a_json_error() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let customer = app.customer(org, "Alex").await;
    // Ingest refuses such a sale now; one stored before is still there to attach.
    let event = sale_totalling("ev-huge", None, HUGE);
    sqlx::query(
        "insert into receipts (org_id, event_id, integration_id, event_type, status, receipt_type, payload,
                               received_at, receipt_id)
         values ($1, 'ev-huge', 1, 'ReceiptCreated', 'unmatched', 'SELL', $2, now(), 'rc-huge')",
    )
    .bind(org)
    .bind(&event)
    .execute(&app.db.pool)
    .await
    .expect("stored");
    let (status, body) = app
        .post(
            &format!("/admin/v1/orgs/{org}/receipts/rc-huge/attach"),
            &json!({"customer_id": customer}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("data.totalAmount")),
        "{body}"
    );
    let (_, alex) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/{customer}"))
        .await;
    assert_eq!(alex["bonuses"], json!(0), "nothing accrued");
}

#[tokio::test]
async fn a_legacy_import_with_absurd_numbers_is_refused_naming_customer_and_field() {
    let app = TestApp::spawn().await;
    let export = legacy_export();
    let id = export
        .as_object()
        .expect("object")
        .keys()
        .find(|k| k.parse::<i64>().is_ok())
        .expect("a customer")
        .clone();
    for (field, value) in [("visited_at", "1e28"), ("bonuses", "1e28")] {
        let mut doc = export.clone();
        doc[&id][field] = number(value);
        let (status, body) = app.post("/admin/v1/import", &doc).await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (422, Some(format!("{id}.{field}").as_str())),
            "{body}"
        );
    }
}
