//! The POS protocol and the receipt pipeline end to end: HTTP → RabbitMQ → worker → PostgreSQL.

use e2e::{TestApp, pos_log, receipt_event, send};
use serde_json::{Value, json};

/// An organization with the legacy settings, a POS token, Alex referred by Synkris, and a bill.
struct Shop {
    org: i64,
    token: String,
    alex: String,
    friend: String,
}

async fn shop(app: &TestApp) -> Shop {
    let org = app.org().await;
    let token = app.pos_token(org, "time-to-grow-pro").await;
    let friend = app.customer(org, "Synkris").await;
    let (status, body) = app
        .post(
            &format!("/admin/v1/orgs/{org}/customers"),
            &json!({"first_name": "Alex", "last_name": "Morshen"}),
        )
        .await;
    assert_eq!(status, 201);
    let alex = body["id"].as_str().expect("id").to_owned();
    let (status, _) = app
        .post(
            &format!("/admin/v1/orgs/{org}/customers/{alex}/promo"),
            &json!({"code": format!("PROMO{friend}")}),
        )
        .await;
    assert_eq!(status, 200);
    Shop {
        org,
        token,
        alex,
        friend,
    }
}

async fn bill(
    app: &TestApp,
    shop: &Shop,
    number: &str,
    price: &str,
    pay_with_bonuses: Option<&str>,
) -> i64 {
    let mut body = json!({
        "customer_id": shop.alex,
        "number": number,
        "items": [{"name": "Цзинмай Ми Сян Сун Чжэнь", "quantity": 1, "unit_price": price, "unit": "Грамм", "tax_rate": 5, "product_id": 2527}]
    });
    if let Some(amount) = pay_with_bonuses {
        body["bonus_payment"] = json!({"amount": amount, "wallet": "main"});
    }
    let (status, created) = app
        .post(&format!("/admin/v1/orgs/{}/bills", shop.org), &body)
        .await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_i64().expect("id")
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().expect("object").keys().cloned().collect();
    keys.sort();
    keys
}

/// The logged response of the given type.
fn logged(kind: &str) -> Value {
    pos_log()
        .as_array()
        .expect("log")
        .iter()
        .find(|r| r["type"] == kind && r["direction"] == "response")
        .map(|r| r["json"].clone())
        .expect("logged response")
}

#[tokio::test]
async fn the_pos_protocol_answers_in_the_logged_shapes() {
    let app = TestApp::spawn().await;
    let shop = shop(&app).await;
    let id = bill(&app, &shop, "47827-CRM", "17500", None).await;

    let (status, hello) = app.pos_get(&shop.token, "/api/v2/hello").await;
    assert_eq!(status, 200);
    assert_eq!(
        hello,
        json!({"system": "time-to-grow-pro", "protocol": "0.1.0"})
    );

    let (status, list) = app
        .pos_get(&shop.token, "/api/v2/list?number=47827-CRM")
        .await;
    assert_eq!(status, 200, "{list}");
    let logged_list = logged("LIST");
    assert_eq!(keys(&list[0]), keys(&logged_list[0]));
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["summ"], json!(17500));
    assert_eq!(list[0]["customername"], "Alex Morshen");
    let (_, none) = app.pos_get(&shop.token, "/api/v2/list?number=nope").await;
    assert_eq!(none, json!([]));
    let (_, today) = app.pos_get(&shop.token, "/api/v2/list?date=today").await;
    assert_eq!(today.as_array().map(Vec::len), Some(1));

    let (status, bill) = app
        .pos_get(&shop.token, &format!("/api/v2/bill/byid/{id}"))
        .await;
    assert_eq!(status, 200, "{bill}");
    let logged_bill = logged("BILL");
    assert_eq!(keys(&bill), keys(&logged_bill));
    assert_eq!(keys(&bill["customer"]), keys(&logged_bill["customer"]));
    assert_eq!(
        keys(&bill["products"][0]),
        keys(&logged_bill["products"][0])
    );
    assert_eq!(bill["products"][0]["taxrate"], "5%");
    assert_eq!(bill["products"][0]["id"], 2527);
    assert_eq!(bill["prepayment"], json!(0));
    assert!(bill["date"].as_str().expect("date").len() == "2026-02-27 12:38:41".len());

    let (status, _) = app.pos_get(&shop.token, "/api/v2/bill/byid/999999").await;
    assert_eq!(status, 404);
    let (status, _) = app.pos_get("wrong-token", "/api/v2/hello").await;
    assert_eq!(status, 401);
    // Another organization's register does not see this bill.
    let other = app.org().await;
    let other_token = app.pos_token(other, "mezoestetic-ru").await;
    let (status, _) = app
        .pos_get(&other_token, &format!("/api/v2/bill/byid/{id}"))
        .await;
    assert_eq!(status, 404);
    let (_, other_list) = app.pos_get(&other_token, "/api/v2/list").await;
    assert_eq!(other_list, json!([]));
}

#[tokio::test]
async fn the_logged_receipts_are_accepted_with_an_empty_200() {
    let app = TestApp::spawn().await;
    let shop = shop(&app).await;
    let _worker = app.start_worker();
    for row in pos_log()
        .as_array()
        .expect("log")
        .iter()
        .filter(|r| r["type"] == "RECEIPT" && r["direction"] == "request")
    {
        let event = &row["json"]["body"];
        let response = app
            .http
            .post(app.url("/api/v2/receipts"))
            .bearer_auth(&shop.token)
            .json(event)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.expect("body"), "");
        // Their bills are not ours: kept as unmatched for operators, no balance moved.
        let stored = app
            .wait_receipt(shop.org, event["id"].as_str().expect("id"), "unmatched")
            .await;
        assert!(stored["reason"].as_str().expect("reason").contains("bill"));
    }
    let (_, alex) = app
        .get(&format!(
            "/admin/v1/orgs/{}/customers/{}",
            shop.org, shop.alex
        ))
        .await;
    assert_eq!(alex["bonuses"], json!(50), "only the promo bonus");
}

#[tokio::test]
async fn a_first_sale_accrues_and_rewards_the_referrer_exactly_once() {
    let app = TestApp::spawn().await;
    let shop = shop(&app).await;
    let _worker = app.start_worker();
    let id = bill(&app, &shop, "5CE08221", "1000", None).await;

    let event = receipt_event("ev-1", "rc-1", Some(id), "1000");
    assert_eq!(app.post_receipt(&shop.token, &event).await.0, 200);
    let row = app.wait_receipt(shop.org, "ev-1", "processed").await;
    // The POS resends it, and then sends the same receipt under a new event id.
    assert_eq!(app.post_receipt(&shop.token, &event).await.0, 200);
    assert_eq!(
        app.post_receipt(
            &shop.token,
            &receipt_event("ev-2", "rc-1", Some(id), "1000")
        )
        .await
        .0,
        200
    );
    app.wait_receipt(shop.org, "ev-2", "duplicate").await;

    let (_, alex) = app
        .get(&format!(
            "/admin/v1/orgs/{}/customers/{}",
            shop.org, shop.alex
        ))
        .await;
    let invoice = row["invoice_id"].as_str().expect("invoice");
    assert_eq!(invoice.len(), 8);
    assert_eq!(alex["bonuses"], json!(70), "50 promo + 2 % of 1000");
    assert_eq!(
        alex["history"][1]["description"],
        format!("Бонус с накладной #{invoice}")
    );
    assert_eq!(alex["has_made_first_purchase"], true);
    assert_eq!(alex["invoices"][0]["invoice_id"], invoice);
    assert_eq!(alex["invoices"][0]["total_amount"], json!(1000));
    let (_, friend) = app
        .get(&format!(
            "/admin/v1/orgs/{}/customers/{}",
            shop.org, shop.friend
        ))
        .await;
    assert_eq!(
        friend["referral_bonuses"],
        json!(50),
        "5 % of the first purchase"
    );
    assert_eq!(
        friend["referral_bonus_history"][0]["description"],
        "Бонус от друга Alex"
    );
    let (_, paid) = app
        .get(&format!("/admin/v1/orgs/{}/bills/{id}", shop.org))
        .await;
    assert_eq!(paid["status"], "paid");
    let metrics = app.scrape_metrics().await;
    for line in [
        "loyalty_receipts_acknowledged_total",
        "loyalty_receipts_total{status=\"processed\"}",
        "loyalty_receipt_end_to_end_seconds_bucket",
        "loyalty_queue_messages{",
    ] {
        assert!(
            metrics.contains(line),
            "{line} missing from /metrics:\n{metrics}"
        );
    }
    let outbox: i64 = sqlx::query_scalar(
        "select count(*) from outbox where kind in ('purchase_accrual', 'referral_reward')",
    )
    .fetch_one(&app.db.pool)
    .await
    .expect("count");
    assert_eq!(
        outbox, 2,
        "the customer's accrual and the referrer's reward"
    );

    // The second purchase, partly paid with bonuses: the hold is captured, no accrual (the old
    // system's last rule), no second referral reward.
    let second = bill(&app, &shop, "9B6E3C60", "10000", Some("70")).await;
    assert_eq!(
        app.post_receipt(
            &shop.token,
            &receipt_event("ev-3", "rc-3", Some(second), "9930")
        )
        .await
        .0,
        200
    );
    let row = app.wait_receipt(shop.org, "ev-3", "processed").await;
    let (_, alex) = app
        .get(&format!(
            "/admin/v1/orgs/{}/customers/{}",
            shop.org, shop.alex
        ))
        .await;
    assert_eq!(alex["bonuses"], json!(0));
    assert_eq!(
        alex["combined_history"][0]["description"],
        format!(
            "Оплата по накладной #{}",
            row["invoice_id"].as_str().expect("id")
        )
    );
    assert_eq!(alex["combined_history"][0]["amount"], json!(70));
    let (_, friend) = app
        .get(&format!(
            "/admin/v1/orgs/{}/customers/{}",
            shop.org, shop.friend
        ))
        .await;
    assert_eq!(friend["referral_bonuses"], json!(50));
    let held: rust_decimal::Decimal =
        sqlx::query_scalar("select bonuses_held from customers where id = $1")
            .bind(shop.alex.parse::<i64>().expect("id"))
            .fetch_one(&app.db.pool)
            .await
            .expect("held");
    assert!(held.is_zero());
}

#[tokio::test]
async fn two_hundred_concurrent_receipts_of_one_customer_all_count() {
    let app = TestApp::spawn().await;
    let shop = shop(&app).await;
    let mut bills = Vec::new();
    for i in 0..200 {
        bills.push(bill(&app, &shop, &format!("N{i}"), "100.50", None).await);
    }
    let answers = futures::future::join_all(bills.iter().enumerate().map(|(i, id)| {
        let event = receipt_event(&format!("ev-{i}"), &format!("rc-{i}"), Some(*id), "100.50");
        let token = shop.token.clone();
        let app = &app;
        async move { app.post_receipt(&token, &event).await.0 }
    }))
    .await;
    assert!(answers.iter().all(|s| *s == 200));
    let _worker = app.start_worker();
    for i in 0..200 {
        app.wait_receipt(shop.org, &format!("ev-{i}"), "processed")
            .await;
    }
    let (_, alex) = app
        .get(&format!(
            "/admin/v1/orgs/{}/customers/{}",
            shop.org, shop.alex
        ))
        .await;
    // 50 promo + 200 × round(2.01) = 50 + 402.
    assert_eq!(alex["bonuses"], json!(452));
    assert_eq!(alex["history"].as_array().map(Vec::len), Some(201));
}

#[tokio::test]
async fn bad_receipts_are_refused_naming_the_field_and_change_nothing() {
    let app = TestApp::spawn().await;
    let shop = shop(&app).await;
    let id = bill(&app, &shop, "B1", "100", None).await;
    let post = |body: Vec<u8>| {
        app.http
            .post(app.url("/api/v2/receipts"))
            .bearer_auth(&shop.token)
            .header("content-type", "application/json")
            .body(body)
    };

    let (status, body) = send(post(b"{\"id\": ".to_vec())).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let good = receipt_event("ev-x", "rc-x", Some(id), "100");
    for (pointer, field) in [
        ("/id", "id"),
        ("/data/id", "data.id"),
        ("/data/type", "data.type"),
        ("/data/items", "data.items"),
        ("/data/totalAmount", "data.totalAmount"),
    ] {
        let mut broken = good.clone();
        let (parent, key) = pointer.rsplit_once('/').expect("pointer");
        broken
            .pointer_mut(if parent.is_empty() { "" } else { parent })
            .and_then(Value::as_object_mut)
            .expect("object")
            .remove(key);
        let (status, body) = app.post_receipt(&shop.token, &broken).await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (422, Some(field)),
            "{pointer}: {body}"
        );
    }
    let mut wrong = good.clone();
    wrong["data"]["totalAmount"] = json!("12.345");
    let (status, body) = app.post_receipt(&shop.token, &wrong).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("data.totalAmount")),
        "{body}"
    );
    wrong["data"]["totalAmount"] = json!(100);
    wrong["data"]["items"] = json!("none");
    let (status, body) = app.post_receipt(&shop.token, &wrong).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("data.items")),
        "{body}"
    );

    let (status, _) = send(post(vec![b' '; 1024 * 1024 + 1])).await;
    assert_eq!(status, 413);
    let (status, _) = send(app.http.post(app.url("/api/v2/receipts")).json(&good)).await;
    assert_eq!(status, 401);
    let (status, _) = app.post_receipt("pos_wrong", &good).await;
    assert_eq!(status, 401);

    let queue = app
        .state
        .broker
        .topology()
        .main(loyalty::queue::Stream::Receipts);
    assert_eq!(app.queue_depth(&queue).await, 0, "nothing was published");

    // Other event types are acknowledged and recorded as ignored.
    let _worker = app.start_worker();
    let (status, _) = app
        .post_receipt(
            &shop.token,
            &json!({"id": "ev-other", "type": "ReceiptDeleted", "data": {}}),
        )
        .await;
    assert_eq!(status, 200);
    app.wait_receipt(shop.org, "ev-other", "ignored").await;
}

#[tokio::test]
async fn an_unreachable_broker_gets_a_503_with_retry_after_never_a_200() {
    let mut app = TestApp::spawn().await;
    let shop = shop(&app).await;
    let mut config = (*app.state.config).clone();
    config.backends.amqp_url = vec!["amqp://guest:guest@127.0.0.1:1/%2f".into()];
    app.state = ingest::AppState::new(app.db.pool.clone(), config).expect("ingest state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    app.base = format!("http://{}", listener.local_addr().expect("addr"));
    let state = app.state.clone();
    tokio::spawn(async move {
        axum::serve(listener, ingest::app(state))
            .await
            .expect("serve")
    });

    let response = app
        .http
        .post(app.url("/api/v2/receipts"))
        .bearer_auth(&shop.token)
        .json(&receipt_event("ev-1", "rc-1", None, "100"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("retry-after").is_some());
    let (status, ready) = send(app.http.get(app.url("/readyz"))).await;
    assert_eq!(
        (status, ready["rabbitmq"].clone(), ready["postgres"].clone()),
        (503, json!(false), json!(true))
    );
}

#[tokio::test]
async fn a_failing_database_is_retried_until_the_receipt_applies() {
    let app = TestApp::spawn().await;
    let shop = shop(&app).await;
    let id = bill(&app, &shop, "R1", "1000", None).await;
    let _worker = app.start_worker();
    // The fault: the invoices table disappears, so applying the receipt fails in the database.
    sqlx::query("alter table invoices rename to invoices_away")
        .execute(&app.db.pool)
        .await
        .expect("inject");
    assert_eq!(
        app.post_receipt(
            &shop.token,
            &receipt_event("ev-r", "rc-r", Some(id), "1000")
        )
        .await
        .0,
        200
    );
    let retrying = app.wait_receipt(shop.org, "ev-r", "retrying").await;
    assert!(
        retrying["last_error"]
            .as_str()
            .expect("error")
            .contains("invoices"),
        "{retrying}"
    );
    sqlx::query("alter table invoices_away rename to invoices")
        .execute(&app.db.pool)
        .await
        .expect("heal");
    let done = app.wait_receipt(shop.org, "ev-r", "processed").await;
    assert!(done["attempts"].as_i64().expect("attempts") >= 2, "{done}");
    let (_, alex) = app
        .get(&format!(
            "/admin/v1/orgs/{}/customers/{}",
            shop.org, shop.alex
        ))
        .await;
    assert_eq!(alex["bonuses"], json!(70));
}

#[tokio::test]
async fn a_receipt_that_can_never_apply_goes_to_the_dead_letter_queue_with_its_error() {
    let app = TestApp::spawn().await;
    let shop = shop(&app).await;
    let id = bill(&app, &shop, "D1", "1000", None).await;
    let _worker = app.start_worker();
    assert_eq!(
        app.post_receipt(&shop.token, &receipt_event("ev-d", "rc-d", Some(id), "0"))
            .await
            .0,
        200
    );
    let dead = app.wait_receipt(shop.org, "ev-d", "dead").await;
    assert!(
        dead["last_error"]
            .as_str()
            .expect("error")
            .contains("positive"),
        "{dead}"
    );
    let queue = app
        .state
        .broker
        .topology()
        .dead(loyalty::queue::Stream::Receipts);
    assert_eq!(app.queue_depth(&queue).await, 1);
    let (_, bill) = app
        .get(&format!("/admin/v1/orgs/{}/bills/{id}", shop.org))
        .await;
    assert_eq!(bill["status"], "open", "nothing changed");
}

fn refund_event(event_id: &str, receipt_id: &str, bill: i64, total: &str) -> Value {
    let mut event = receipt_event(event_id, receipt_id, Some(bill), total);
    event["data"]["type"] = json!("PAYBACK");
    event
}

#[tokio::test]
async fn a_refund_after_the_bonuses_were_spent_stops_at_zero_and_records_the_shortfall() {
    let app = TestApp::spawn().await;
    let shop = shop(&app).await;
    let _worker = app.start_worker();
    let id = bill(&app, &shop, "S1", "10000", None).await;
    assert_eq!(
        app.post_receipt(
            &shop.token,
            &receipt_event("ev-s", "rc-s", Some(id), "10000")
        )
        .await
        .0,
        200
    );
    app.wait_receipt(shop.org, "ev-s", "processed").await;
    // 50 promo + 200 accrual; the customer spends 240 of it.
    let (status, _) = app
        .post(
            &format!(
                "/admin/v1/orgs/{}/customers/{}/bonuses",
                shop.org, shop.alex
            ),
            &json!({"op": "deduct", "amount": 240}),
        )
        .await;
    assert_eq!(status, 201);

    assert_eq!(
        app.post_receipt(&shop.token, &refund_event("ev-p", "rc-p", id, "10000"))
            .await
            .0,
        200
    );
    app.wait_receipt(shop.org, "ev-p", "processed").await;
    let (_, alex) = app
        .get(&format!(
            "/admin/v1/orgs/{}/customers/{}",
            shop.org, shop.alex
        ))
        .await;
    assert_eq!(alex["bonuses"], json!(0), "never negative");
    assert!(
        alex["combined_history"][0]["description"]
            .as_str()
            .expect("text")
            .starts_with("Возврат по накладной #")
    );
    assert_eq!(alex["combined_history"][0]["amount"], json!(10));
    let (due, taken, shortfall): (
        rust_decimal::Decimal,
        rust_decimal::Decimal,
        rust_decimal::Decimal,
    ) = sqlx::query_as("select accrual_due, accrual_taken, shortfall from refunds")
        .fetch_one(&app.db.pool)
        .await
        .expect("refund");
    assert_eq!(
        (due.to_string(), taken.to_string(), shortfall.to_string()),
        ("200".into(), "10".into(), "190".into())
    );

    // The same refund again, under a new event id: nothing more.
    assert_eq!(
        app.post_receipt(&shop.token, &refund_event("ev-p2", "rc-p", id, "10000"))
            .await
            .0,
        200
    );
    app.wait_receipt(shop.org, "ev-p2", "duplicate").await;
    let refunds: i64 = sqlx::query_scalar("select count(*) from refunds")
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    assert_eq!(refunds, 1);
}

#[tokio::test]
async fn partial_refunds_give_back_bonuses_paid_and_take_back_the_accrual_in_proportion() {
    let app = TestApp::spawn().await;
    let shop = shop(&app).await;
    let (status, _) = reqwest_patch(&app, shop.org, json!({"bonus_program_settings": {"invoice_bonus_percentage": 2, "referral_promo_bonus": 50, "referrer_first_purchase_percentage": 5, "accrue_when_paying_with_bonuses": true}})).await;
    assert_eq!(status, 200);
    let _worker = app.start_worker();
    // A 1000 bill, 50 of it paid with the promo bonus: the register charges 950.
    let id = bill(&app, &shop, "P1", "1000", Some("50")).await;
    assert_eq!(
        app.post_receipt(&shop.token, &receipt_event("ev-s", "rc-s", Some(id), "950"))
            .await
            .0,
        200
    );
    app.wait_receipt(shop.org, "ev-s", "processed").await;
    let path = format!("/admin/v1/orgs/{}/customers/{}", shop.org, shop.alex);
    let balance = async |app: &TestApp| app.get(&path).await.1["bonuses"].clone();
    assert_eq!(balance(&app).await, json!(19), "50 − 50 paid + 2 % of 950");

    assert_eq!(
        app.post_receipt(&shop.token, &refund_event("ev-r1", "rc-r1", id, "475"))
            .await
            .0,
        200
    );
    app.wait_receipt(shop.org, "ev-r1", "processed").await;
    assert_eq!(
        balance(&app).await,
        json!(34.5),
        "+25 paid back, −9.5 accrual"
    );
    // The rest, sent as a negative amount as some registers do.
    assert_eq!(
        app.post_receipt(&shop.token, &refund_event("ev-r2", "rc-r2", id, "-475"))
            .await
            .0,
        200
    );
    app.wait_receipt(shop.org, "ev-r2", "processed").await;
    assert_eq!(
        balance(&app).await,
        json!(50),
        "everything paid is back, everything earned is gone"
    );
    // Refunding more than was sold takes nothing more.
    assert_eq!(
        app.post_receipt(&shop.token, &refund_event("ev-r3", "rc-r3", id, "100"))
            .await
            .0,
        200
    );
    app.wait_receipt(shop.org, "ev-r3", "processed").await;
    assert_eq!(balance(&app).await, json!(50));
}

async fn reqwest_patch(app: &TestApp, org: i64, body: Value) -> (u16, Value) {
    send(
        app.admin(reqwest::Method::PATCH, &format!("/admin/v1/orgs/{org}"))
            .json(&body),
    )
    .await
}

#[tokio::test]
async fn an_unmatched_receipt_is_kept_and_can_be_attached_to_a_customer_once() {
    let app = TestApp::spawn().await;
    let shop = shop(&app).await;
    let _worker = app.start_worker();
    assert_eq!(
        app.post_receipt(
            &shop.token,
            &receipt_event("ev-u", "rc-u", Some(424242), "1000")
        )
        .await
        .0,
        200
    );
    let row = app.wait_receipt(shop.org, "ev-u", "unmatched").await;
    assert!(row["reason"].as_str().expect("reason").contains("424242"));
    let (_, listed) = app
        .get(&format!(
            "/admin/v1/orgs/{}/receipts?status=unmatched",
            shop.org
        ))
        .await;
    assert_eq!(listed["items"][0]["receipt_id"], "rc-u");
    let (status, body) = app
        .get(&format!("/admin/v1/orgs/{}/receipts?status=lost", shop.org))
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("status"))
    );

    let path = format!("/admin/v1/orgs/{}/receipts/rc-u/attach", shop.org);
    let (status, attached) = app.post(&path, &json!({"customer_id": shop.alex})).await;
    assert_eq!(status, 200, "{attached}");
    assert_eq!(attached["status"], "processed");
    let (status, again) = app.post(&path, &json!({"customer_id": shop.alex})).await;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (409, Some("not_unmatched"))
    );
    let (_, alex) = app
        .get(&format!(
            "/admin/v1/orgs/{}/customers/{}",
            shop.org, shop.alex
        ))
        .await;
    assert_eq!(alex["bonuses"], json!(70));
    let (_, friend) = app
        .get(&format!(
            "/admin/v1/orgs/{}/customers/{}",
            shop.org, shop.friend
        ))
        .await;
    assert_eq!(
        friend["referral_bonuses"],
        json!(50),
        "an attached first purchase rewards the referrer too"
    );
    let (status, _) = app
        .post(
            &format!("/admin/v1/orgs/{}/receipts/nope/attach", shop.org),
            &json!({"customer_id": shop.alex}),
        )
        .await;
    assert_eq!(status, 404);
}

/// The receipts of `status` the operator listing shows, as (event id, receipt id, duplicate_of).
async fn listed(app: &TestApp, org: i64, status: &str) -> Vec<(Value, Value, Value)> {
    let (code, page) = app
        .get(&format!("/admin/v1/orgs/{org}/receipts?status={status}"))
        .await;
    assert_eq!(code, 200, "{page}");
    let mut rows: Vec<(Value, Value, Value)> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| {
            (
                r["event_id"].clone(),
                r["receipt_id"].clone(),
                r["duplicate_of"].clone(),
            )
        })
        .collect();
    rows.sort_by_key(|r| r.0.to_string());
    rows
}

#[tokio::test]
async fn a_receipt_resent_under_new_event_ids_is_listed_as_duplicates_of_the_event_that_applied_it()
{
    let app = TestApp::spawn().await;
    let shop = shop(&app).await;
    let id = bill(&app, &shop, "DUP-1", "1000", None).await;
    let other = bill(&app, &shop, "DUP-2", "500", None).await;

    // One worker after the other: the resend waits for the first event's commit.
    let worker = app.start_worker();
    let event = receipt_event("ev-1", "rc-1", Some(id), "1000");
    assert_eq!(app.post_receipt(&shop.token, &event).await.0, 200);
    app.wait_receipt(shop.org, "ev-1", "processed").await;
    let resent = receipt_event("ev-2", "rc-1", Some(id), "1000");
    assert_eq!(app.post_receipt(&shop.token, &resent).await.0, 200);
    app.wait_receipt(shop.org, "ev-2", "duplicate").await;
    worker.stop().await;

    // Both in one batch (in either order): one applies, the other is its duplicate.
    for event_id in ["ev-3", "ev-4"] {
        let event = receipt_event(event_id, "rc-2", Some(other), "500");
        assert_eq!(app.post_receipt(&shop.token, &event).await.0, 200);
    }
    let _worker = app.start_worker();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while listed(&app, shop.org, "duplicate").await.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no second duplicate");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let processed = listed(&app, shop.org, "processed").await;
    assert_eq!(processed.len(), 2, "{processed:?}");
    assert_eq!(processed[0], (json!("ev-1"), json!("rc-1"), Value::Null));
    let applied = processed[1].0.clone();
    let duplicate = if applied == "ev-3" { "ev-4" } else { "ev-3" };
    assert_eq!(processed[1], (applied.clone(), json!("rc-2"), Value::Null));
    assert_eq!(
        listed(&app, shop.org, "duplicate").await,
        vec![
            (json!("ev-2"), json!("rc-1"), json!("ev-1")),
            (json!(duplicate), json!("rc-2"), applied),
        ]
    );
    let (_, alex) = app
        .get(&format!(
            "/admin/v1/orgs/{}/customers/{}",
            shop.org, shop.alex
        ))
        .await;
    assert_eq!(
        alex["history"].as_array().map(Vec::len),
        Some(3),
        "the promo bonus and one accrual per receipt"
    );
}

#[tokio::test]
async fn connections_ask_for_small_frames_and_a_receipt_of_many_frames_still_applies() {
    // The services' connections ask for 16 KiB frames (lapin's I/O buffers are 32 frames each),
    // unless the URL says otherwise.
    let url = e2e::amqp_url().await;
    let properties = lapin::ConnectionProperties::default();
    for (asked, frame_max) in [
        (url.to_owned(), loyalty::queue::nodes::FRAME_MAX),
        (format!("{url}?frame_max=65536"), 65_536),
    ] {
        let conn = loyalty::queue::nodes::Nodes::new([asked.as_str()])
            .connect(properties.clone())
            .await
            .expect("connected");
        assert_eq!(conn.configuration().frame_max(), frame_max);
        conn.close(200, "done".into()).await.expect("closed");
    }

    // A receipt of 60 KiB (four frames and more) is published, consumed and applied whole.
    let app = TestApp::spawn().await;
    let shop = shop(&app).await;
    let id = bill(&app, &shop, "BIG", "100.50", None).await;
    let mut event = receipt_event("ev-big", "rc-big", Some(id), "100.50");
    event["data"]["extras"]["comment"] = json!("я".repeat(30_000));
    assert_eq!(app.post_receipt(&shop.token, &event).await.0, 200);
    let _worker = app.start_worker();
    app.wait_receipt(shop.org, "ev-big", "processed").await;
    let stored: Value = sqlx::query_scalar(
        "select payload from receipts where org_id = $1 and event_id = 'ev-big'",
    )
    .bind(shop.org)
    .fetch_one(&app.db.pool)
    .await
    .expect("stored");
    assert_eq!(
        stored["data"]["extras"]["comment"],
        event["data"]["extras"]["comment"]
    );
}
