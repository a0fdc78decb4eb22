//! The Mini App profile (`GET …/me`) of a customer with a long history carries the newest 50
//! movements, and `history_next_before` goes on from there in `…/me/history`: the two together
//! are the whole history, and each wallet's list in the profile is the end of that wallet's whole
//! list (as the operator's view shows it).

use e2e::{BOT_TOKEN, TestApp, signed_init_data};
use serde_json::{Value, json};

fn list(value: &Value) -> Vec<Value> {
    value.as_array().expect("a list").clone()
}

#[tokio::test]
async fn the_profile_carries_the_newest_fifty_movements_and_the_history_goes_on_from_there() {
    let app = TestApp::spawn().await;
    let org = app.org_with_bot(BOT_TOKEN).await;
    let alex = signed_init_data(&json!({"id": 42, "first_name": "Alex"}), BOT_TOKEN);
    let me = format!("/app/v1/orgs/{org}/me");
    let (status, first) = app.as_user(reqwest::Method::GET, &me, &alex, None).await;
    assert_eq!(status, 200, "{first}");
    let id = first["id"].as_str().expect("id").to_owned();
    assert_eq!(
        first["history_next_before"],
        Value::Null,
        "nothing to page yet"
    );

    // 62 accruals and 3 debts: more than the profile carries.
    for amount in 1..=62 {
        app.accrue(org, &id, amount).await;
    }
    for _ in 0..3 {
        let (status, body) = app
            .post(
                &format!("/admin/v1/orgs/{org}/customers/{id}/debts"),
                &json!({"op": "add", "amount": 5}),
            )
            .await;
        assert!(status == 200 || status == 201, "{body}");
    }

    let (status, profile) = app.as_user(reqwest::Method::GET, &me, &alex, None).await;
    assert_eq!(status, 200, "{profile}");
    let combined = list(&profile["combined_history"]);
    assert_eq!(combined.len(), 50);
    assert_eq!(
        profile["bonuses"],
        json!((1..=62).sum::<i64>()),
        "balances are whole"
    );
    let before = profile["history_next_before"]
        .as_str()
        .expect("a cursor: there is more")
        .to_owned();

    // The whole history, one page; and what follows the profile's cursor.
    let page = |query: String| {
        let app = &app;
        let alex = &alex;
        async move {
            let (status, page) = app
                .as_user(
                    reqwest::Method::GET,
                    &format!("/app/v1/orgs/{org}/me/history?limit=100{query}"),
                    alex,
                    None,
                )
                .await;
            assert_eq!(status, 200, "{page}");
            list(&page["items"])
        }
    };
    let whole = page(String::new()).await;
    assert_eq!(whole.len(), 65);
    let rest = page(format!("&before={before}")).await;
    let mut joined = combined.clone();
    joined.extend(rest);
    assert_eq!(
        joined, whole,
        "the profile, then the pages after its cursor"
    );

    // Each wallet's list is the end of that wallet's whole list, in the order written.
    let (status, full) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/{id}"))
        .await;
    assert_eq!(status, 200, "{full}");
    let mut carried = 0;
    for wallet in ["history", "debt_history", "referral_bonus_history"] {
        let all = list(&full[wallet]);
        let newest = list(&profile[wallet]);
        assert_eq!(newest, all[all.len() - newest.len()..], "{wallet}");
        carried += newest.len();
    }
    assert_eq!(carried, 50, "the wallets' parts of the newest 50");
    assert_eq!(list(&profile["debt_history"]).len(), 3);
}
