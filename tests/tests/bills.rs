//! Bills hold their bonus payment at once, so open bills can never spend the same bonuses twice.

use e2e::{TestApp, send};
use reqwest::Method;
use serde_json::json;

async fn customer_with_bonuses(app: &TestApp, org: i64, amount: u32) -> String {
    let id = app.customer(org, "Alex").await;
    app.accrue(org, &id, amount).await;
    id
}

fn bill(customer: &str, pay: u32) -> serde_json::Value {
    json!({
        "customer_id": customer,
        "items": [{"name": "Цзинь Цзюнь Мэй", "quantity": "500", "unit_price": 19.1, "unit": "Грамм", "tax_rate": 5}],
        "bonus_payment": {"amount": pay, "wallet": "main"}
    })
}

#[tokio::test]
async fn twenty_parallel_bills_never_hold_more_than_the_balance() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let id = customer_with_bonuses(&app, org, 100).await;
    let path = format!("/admin/v1/orgs/{org}/bills");
    let answers = futures::future::join_all(
        (0..20).map(|_| send(app.admin(Method::POST, &path).json(&bill(&id, 30)))),
    )
    .await;
    let created = answers.iter().filter(|(s, _)| *s == 201).count();
    let refused = answers
        .iter()
        .filter(|(s, b)| *s == 409 && b["error"]["code"] == "insufficient_balance")
        .count();
    assert_eq!((created, refused), (3, 17), "{answers:?}");
    let (held, balance): (rust_decimal::Decimal, rust_decimal::Decimal) =
        sqlx::query_as("select bonuses_held, bonuses from customers where org_id = $1")
            .bind(org)
            .fetch_one(&app.db.pool)
            .await
            .expect("row");
    assert_eq!(
        (held.to_string(), balance.to_string()),
        ("90".into(), "100".into())
    );

    // What open bills hold cannot be deducted by hand either.
    let (status, _) = app
        .post(
            &format!("/admin/v1/orgs/{org}/customers/{id}/bonuses"),
            &json!({"op": "deduct", "amount": 11}),
        )
        .await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn a_bill_totals_its_lines_and_cancelling_releases_its_hold() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let id = customer_with_bonuses(&app, org, 100).await;
    let (status, created) = app
        .post(&format!("/admin/v1/orgs/{org}/bills"), &bill(&id, 100))
        .await;
    assert_eq!(status, 201, "{created}");
    let bill_id = created["id"].as_i64().expect("id");
    assert_eq!(
        created["number"],
        bill_id.to_string(),
        "the number defaults to the id"
    );

    let (_, read) = app
        .get(&format!("/admin/v1/orgs/{org}/bills/{bill_id}"))
        .await;
    // Written the way the documents write amounts: 500 × 19.1 is 9550, not 9550.0.
    assert_eq!(read["total"], json!(9550));
    assert_eq!(read["items"][0]["item_total"], json!(9550));
    assert_eq!(read["items"][0]["unit_price"], json!(19.1));
    assert_eq!(
        read["bonus_payment"],
        json!({"amount": 100, "wallet": "main"})
    );
    assert_eq!(read["status"], "open");

    let (status, _) = app
        .post(&format!("/admin/v1/orgs/{org}/bills"), &bill(&id, 1))
        .await;
    assert_eq!(status, 409, "everything is held");

    let cancel = || {
        app.admin(
            Method::DELETE,
            &format!("/admin/v1/orgs/{org}/bills/{bill_id}"),
        )
        .header("Idempotency-Key", "cancel-1")
    };
    let (status, cancelled) = send(cancel()).await;
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (200, Some("cancelled"))
    );
    let (status, again) = send(cancel()).await;
    assert_eq!(
        (status, again["status"].as_str()),
        (200, Some("cancelled")),
        "a retried cancel gets the first answer"
    );
    let (status, body) = send(app.admin(
        Method::DELETE,
        &format!("/admin/v1/orgs/{org}/bills/{bill_id}"),
    ))
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("bill_closed"))
    );

    let (status, _) = app
        .post(&format!("/admin/v1/orgs/{org}/bills"), &bill(&id, 100))
        .await;
    assert_eq!(status, 201, "the hold was released");
    let (_, open) = app
        .get(&format!("/admin/v1/orgs/{org}/bills?status=open"))
        .await;
    assert_eq!(open["items"].as_array().map(Vec::len), Some(1));
    let (_, cancelled) = app
        .get(&format!("/admin/v1/orgs/{org}/bills?status=cancelled"))
        .await;
    assert_eq!(cancelled["items"][0]["id"], bill_id);
    let (status, _) = app
        .get(&format!("/admin/v1/orgs/{org}/bills?status=lost"))
        .await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn bad_bills_are_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let id = customer_with_bonuses(&app, org, 100).await;
    let path = format!("/admin/v1/orgs/{org}/bills");
    let cases = [
        (json!({"customer_id": id, "items": []}), "items"),
        (
            json!({"customer_id": id, "items": [{"name": "x", "quantity": 0, "unit_price": 1}]}),
            "items[0].quantity",
        ),
        (
            json!({"customer_id": id, "items": [{"name": "x", "quantity": 1, "unit_price": "1.005"}]}),
            "items[0].unit_price",
        ),
        (
            json!({"customer_id": id, "items": [{"name": "x", "quantity": 1}]}),
            "items[0].unit_price",
        ),
        (
            json!({"customer_id": "abc", "items": [{"name": "x", "quantity": 1, "unit_price": 1}]}),
            "customer_id",
        ),
        (
            json!({"customer_id": id, "items": [{"name": "x", "quantity": 1, "unit_price": 5}], "bonus_payment": {"amount": 6}}),
            "bonus_payment.amount",
        ),
        (
            json!({"customer_id": id, "items": [{"name": "x", "quantity": 1, "unit_price": 5}], "bonus_payment": {"amount": 1, "wallet": "debt"}}),
            "bonus_payment.wallet",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = app.post(&path, &body).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    }
    let (status, _) = app.post(&path, &json!({"customer_id": id, "number": "A-1", "items": [{"name": "x", "quantity": 1, "unit_price": 5}]})).await;
    assert_eq!(status, 201);
    let (status, body) = app.post(&path, &json!({"customer_id": id, "number": "A-1", "items": [{"name": "x", "quantity": 1, "unit_price": 5}]})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("bill_number_taken"))
    );
    let held: rust_decimal::Decimal = sqlx::query_scalar("select bonuses_held from customers")
        .fetch_one(&app.db.pool)
        .await
        .expect("row");
    assert!(held.is_zero());
}
