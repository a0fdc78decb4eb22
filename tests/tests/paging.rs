//! Keyset paging (`?after=` a page's `next_cursor`) of the long lists — receipts, notifications,
//! customers — is stable under inserts: a walk sees every row once, whatever arrives meanwhile,
//! where offset pages shift. Offset paging still answers as before, in the same order.

use std::collections::HashSet;

use e2e::TestApp;
use serde_json::{Value, json};

/// Rows of each list (pages of 10, so the walk crosses ties between pages).
const ROWS: i64 = 25;

/// Walks `path` (which has a query string) page by page with `after`, calling `between` after
/// each page; the id (`key`) of every row seen, in order.
async fn walk_keyset(
    app: &TestApp,
    path: &str,
    key: &str,
    mut between: impl AsyncFnMut(usize),
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for page in 0.. {
        let url = match &after {
            None => format!("{path}&limit=10"),
            Some(cursor) => format!("{path}&limit=10&after={cursor}"),
        };
        let (status, body) = app.get(&url).await;
        assert_eq!(status, 200, "{url}: {body}");
        if after.is_some() {
            assert_eq!(
                body["next_offset"],
                Value::Null,
                "a cursor page has no next offset"
            );
        }
        seen.extend(ids(&body, key));
        between(page).await;
        match body["next_cursor"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
        assert!(page < 20, "the walk does not end");
    }
    seen
}

/// The same walk by `offset`, without inserts.
async fn walk_offset(app: &TestApp, path: &str, key: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let url = format!("{path}&limit=10&offset={offset}");
        let (status, body) = app.get(&url).await;
        assert_eq!(status, 200, "{url}: {body}");
        seen.extend(ids(&body, key));
        match body["next_offset"].as_i64() {
            Some(next) => offset = next,
            None => break,
        }
        assert!(offset < 200, "the walk does not end");
    }
    seen
}

fn ids(body: &Value, key: &str) -> Vec<String> {
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| match &item[key] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

fn assert_each_once(seen: &[String], expected: &HashSet<String>) {
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a row was seen twice: {seen:?}");
    for id in expected {
        assert!(seen.contains(id), "{id} was skipped: {seen:?}");
    }
}

/// Receipts whose changes fall in pairs on the same instant (ties the cursor must break), with
/// every fifth one dead.
async fn insert_receipts(app: &TestApp, org: i64, from: i64, count: i64, newest: bool) {
    sqlx::query(
        "insert into receipts (org_id, event_id, event_type, status, payload, received_at, updated_at)
         select $1, 'ev-' || g, 'ReceiptCreated', case when g % 5 = 0 then 'dead' else 'processed' end,
                '{}', now(), case when $4 then now() + interval '1 hour'
                                  else timestamptz '2026-11-01' + (g / 2) * interval '1 minute' end
         from generate_series($2::bigint, $2 + $3 - 1) g",
    )
    .bind(org)
    .bind(from)
    .bind(count)
    .bind(newest)
    .execute(&app.db.pool)
    .await
    .expect("insert receipts");
}

#[tokio::test]
async fn receipt_pages_after_a_cursor_see_every_receipt_once_while_new_ones_arrive() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    insert_receipts(&app, org, 1, ROWS, false).await;
    let path = format!("/admin/v1/orgs/{org}/receipts?x=1");
    let before = walk_offset(&app, &path, "event_id").await;
    assert_eq!(before.len(), usize::try_from(ROWS).expect("rows"));

    let mut next = ROWS + 1;
    let seen = walk_keyset(&app, &path, "event_id", async |_| {
        // A new receipt lands at the head of the list (the newest change) after every page.
        insert_receipts(&app, org, next, 1, true).await;
        next += 1;
    })
    .await;
    assert_each_once(&seen, &before.iter().cloned().collect());
    assert_eq!(
        seen, before,
        "keyset and offset pages list in the same order"
    );

    // The same with a status filter, and on the operations view of every organization.
    let dead: HashSet<String> = (1..=ROWS)
        .filter(|g| g % 5 == 0)
        .map(|g| format!("ev-{g}"))
        .collect();
    let path = format!("/admin/v1/orgs/{org}/receipts?status=dead");
    let seen = walk_keyset(&app, &path, "event_id", async |_| {}).await;
    assert_each_once(&seen, &dead);
    let path = format!("/admin/v1/ops/receipts?org={org}");
    let seen = walk_keyset(&app, &path, "event_id", async |_| {}).await;
    assert_each_once(&seen, &before.iter().cloned().collect());
    let seen = walk_keyset(
        &app,
        "/admin/v1/ops/receipts?status=dead",
        "event_id",
        async |_| {},
    )
    .await;
    assert_each_once(&seen, &dead);
}

#[tokio::test]
async fn notification_pages_after_a_cursor_see_every_notification_once_while_new_ones_arrive() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let insert = async |count: i64| {
        sqlx::query(
            "insert into outbox (org_id, customer_id, kind, payload, status)
             select $1, 1, 'purchase_accrual', '{}', case when g % 3 = 0 then 'sent' else 'skipped' end
             from generate_series(1, $2::bigint) g",
        )
        .bind(org)
        .bind(count)
        .execute(&app.db.pool)
        .await
        .expect("insert notifications");
    };
    insert(ROWS).await;
    let path = format!("/admin/v1/orgs/{org}/notifications?x=1");
    let before = walk_offset(&app, &path, "id").await;
    assert_eq!(before.len(), usize::try_from(ROWS).expect("rows"));
    let seen = walk_keyset(&app, &path, "id", async |_| insert(1).await).await;
    assert_each_once(&seen, &before.iter().cloned().collect());
    assert_eq!(
        seen, before,
        "keyset and offset pages list in the same order"
    );

    let path = format!("/admin/v1/orgs/{org}/notifications?status=sent");
    let sent_before = walk_offset(&app, &path, "id").await;
    let seen = walk_keyset(&app, &path, "id", async |_| insert(3).await).await;
    assert_each_once(&seen, &sent_before.iter().cloned().collect());
    let path = format!("/admin/v1/ops/notifications?status=sent&org={org}");
    let seen = walk_keyset(&app, &path, "id", async |_| {}).await;
    assert_each_once(&seen, &sent_before.iter().cloned().collect());
}

#[tokio::test]
async fn customer_pages_after_a_cursor_see_every_customer_once_including_one_added_meanwhile() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    sqlx::query(
        "insert into customers (org_id, id, first_name, phone_number)
         select $1, g, 'Walker' || g, '+7701000' || lpad(g::text, 4, '0') from generate_series(1, $2::bigint) g",
    )
    .bind(org)
    .bind(ROWS)
    .execute(&app.db.pool)
    .await
    .expect("insert customers");

    for path in [
        format!("/admin/v1/orgs/{org}/customers?q="),
        format!("/admin/v1/orgs/{org}/customers?q=walker"),
    ] {
        let before = walk_offset(&app, &path, "id").await;
        assert_eq!(before.len(), usize::try_from(ROWS).expect("rows"));
        let mut added = Vec::new();
        let seen = walk_keyset(&app, &path, "id", async |page| {
            if page == 0 {
                // A new customer takes the next id: the end of the list, not yet walked.
                added.push(app.customer(org, "Walker new").await);
            }
        })
        .await;
        let mut expected: HashSet<String> = before.iter().cloned().collect();
        expected.extend(added.iter().cloned());
        assert_each_once(&seen, &expected);
        assert_eq!(
            seen[..before.len()],
            before[..],
            "same order as offset pages"
        );
        sqlx::query("delete from customers where org_id = $1 and first_name = 'Walker new'")
            .bind(org)
            .execute(&app.db.pool)
            .await
            .expect("remove the added customer");
    }

    // Phone digits and the id find their customer through the same search.
    let (status, found) = app
        .get(&format!("/admin/v1/orgs/{org}/customers?q=0000017"))
        .await;
    assert_eq!((status, ids(&found, "id")), (200, vec!["17".to_owned()]));
    let (status, found) = app
        .get(&format!("/admin/v1/orgs/{org}/customers?q=23"))
        .await;
    assert_eq!(status, 200, "{found}");
    assert!(ids(&found, "id").contains(&"23".to_owned()), "{found}");
}

#[tokio::test]
async fn a_cursor_that_is_not_a_next_cursor_or_comes_with_an_offset_is_a_422() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    for path in [
        format!("/admin/v1/orgs/{org}/receipts?after=not-a-cursor"),
        format!("/admin/v1/orgs/{org}/notifications?after=%25%25"),
        format!("/admin/v1/orgs/{org}/customers?after=bm9wZQ"),
        format!("/admin/v1/orgs/{org}/customers?after=MTI&offset=10"),
    ] {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, 422, "{path}: {body}");
        assert_eq!(body["error"]["field"], json!("after"), "{path}: {body}");
    }
}
