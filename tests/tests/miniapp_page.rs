//! The Mini App page (`/app/{org}/`): how it is served, and a customer, a cashier and an owner
//! using it in headless Chromium at phone size, in light and dark themes, with init data signed
//! by the test as Telegram would sign it.

use e2e::{BOT_TOKEN, TestApp, receipt_event, run_browser_script, seed_settings, send};
use loyalty::init_data::sign;
use serde_json::{Value, json};

const OTHER_BOT_TOKEN: &str = "987654321:another-shop-token_for-tests";
const BOT_USERNAME: &str = "tea_house_bot";
const SHORT_NAME: &str = "bonus";

/// A shop with a bot, its contacts and the legacy seed's bonus settings.
async fn shop(app: &TestApp, name: &str, token: &str) -> i64 {
    app.create_org(&json!({"name": name, "phone_numbers": ["+7 747 247 91 97"],
                           "whatsapp_link": "wa.me/77472479197", "telegram_link": "https://t.me/tea_house",
                           "address": "Алматы, пр. Абая, 1", "telegram_bot_token": token,
                           "bonus_program_settings": seed_settings()}))
        .await
}

/// Init data for a Telegram user, signed with `token` a minute ago, as the client hands it over.
fn init_data(user: Value, start_param: Option<&str>, token: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        - 60;
    let (auth_date, user) = (now.to_string(), user.to_string());
    let mut fields = vec![
        ("auth_date", auth_date.as_str()),
        ("query_id", "AAE-page-test"),
        ("user", user.as_str()),
        ("chat_type", "sender"),
    ];
    if let Some(param) = start_param {
        fields.push(("start_param", param));
    }
    sign(&fields, token)
}

#[tokio::test]
async fn the_page_is_served_for_any_numeric_org_with_a_strict_content_security_policy() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let page = app
        .http
        .get(app.url(&format!("/app/{org}/")))
        .send()
        .await
        .expect("sent");
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let csp = headers["content-security-policy"].to_str().expect("ascii");
    for directive in [
        "default-src 'none'",
        "script-src 'self' https://telegram.org;",
        "connect-src 'self';",
        "img-src 'self' data: blob:;",
        "style-src 'self';",
        "frame-ancestors https://web.telegram.org",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    let html = page.text().await.expect("body");
    // Telegram's script first, then ours; nothing inline for the policy to allow.
    let telegram = html
        .find(r#"<script src="https://telegram.org/js/telegram-web-app.js"></script>"#)
        .expect("telegram-web-app.js");
    let ours = html
        .find(r#"<script src="/app/assets/app.js" defer></script>"#)
        .expect("app.js");
    assert!(telegram < ours);
    assert_eq!(html.matches("<script").count(), 2);
    assert!(!html.contains(" style=") && !html.contains("<style"));

    for (path, kind) in [
        ("/app/assets/app.js", "text/javascript; charset=utf-8"),
        ("/app/assets/app.css", "text/css; charset=utf-8"),
    ] {
        let asset = app.http.get(app.url(path)).send().await.expect("sent");
        assert_eq!(asset.status(), 200, "{path}");
        assert_eq!(asset.headers()["content-type"], kind);
    }

    // The page holds no data: an organization that does not exist gets the same page (its API
    // answers 401), so the page does not tell which organizations exist.
    let unknown = app
        .http
        .get(app.url("/app/999999/"))
        .send()
        .await
        .expect("sent");
    assert_eq!(unknown.status(), 200);

    // Without the slash, to the page with it; anything but an id is an unknown path.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let bare = no_redirects
        .get(app.url(&format!("/app/{org}")))
        .send()
        .await
        .expect("sent");
    assert_eq!(bare.status(), 308);
    assert_eq!(bare.headers()["location"], format!("/app/{org}/"));
    let (status, body) = send(app.http.get(app.url("/app/shop/"))).await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
}

async fn add_staff(app: &TestApp, org: i64, telegram_id: i64, role: &str, name: &str) {
    let (status, body) = app
        .post(
            &format!("/admin/v1/orgs/{org}/staff"),
            &json!({"telegram_id": telegram_id, "role": role, "name": name}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// What `LIMIT` the page asks the history for, and how many entries the customer has: a page
/// and a part, so the second page comes only by scrolling.
const HISTORY_ENTRIES: usize = 26;

#[tokio::test]
#[cfg_attr(
    not(has_browser),
    ignore = "needs Node.js, Chromium and `npm ci --prefix tests/browser`"
)]
async fn customers_and_staff_use_the_mini_app_in_the_browser() {
    let app = TestApp::spawn().await;
    let org = shop(&app, "Чайный дом", BOT_TOKEN).await;
    let other = shop(&app, "Другой магазин", OTHER_BOT_TOKEN).await;
    let (status, body) = send(
        app.admin(reqwest::Method::PATCH, &format!("/admin/v1/orgs/{org}"))
            .json(&json!({"miniapp_short_name": SHORT_NAME})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The bot's username comes from Telegram's getMe, which this test has no Telegram for.
    sqlx::query("update organizations set telegram_bot_username = $2 where id = $1")
        .bind(org)
        .bind(BOT_USERNAME)
        .execute(&app.db.pool)
        .await
        .expect("username");
    let friend = app.customer(org, "Алия").await;
    let stranger = app.customer(other, "Чужой").await;
    add_staff(&app, org, 8001, "cashier", "Касса 1").await;
    add_staff(&app, org, 9001, "owner", "Айгерим").await;
    let pos = app.pos_token(org, "time-to-grow-pro").await;
    let to_cancel = app.open_bill(org, &friend, 300).await;

    let promo = format!("PROMO{friend}");
    let customer = init_data(
        json!({"id": 7001, "first_name": "Болат", "last_name": "Ким", "username": "bolat",
               "language_code": "ru", "allows_write_to_pm": false}),
        Some(&promo),
        BOT_TOKEN,
    );
    let cashier = init_data(
        json!({"id": 8001, "first_name": "Dana", "language_code": "en", "allows_write_to_pm": true}),
        None,
        BOT_TOKEN,
    );
    let owner = init_data(
        json!({"id": 9001, "first_name": "Айгерим", "language_code": "ru", "allows_write_to_pm": true}),
        None,
        BOT_TOKEN,
    );
    let config = json!({
        "base": app.base, "org": org,
        "customer": customer, "cashier": cashier, "owner": owner,
        "customer_phone_typed": "+7 701 123-45-67",
        "history_entries": HISTORY_ENTRIES,
        "accrual": {"typed": "100", "reason": "Birthday gift"},
        "bill": {"number": "MA-1001", "total": "1 000", "bonus": "50"},
        "other_customer": stranger,
        "refused_status": 404,
        "new_cashier": {"telegram_id": 8002, "name": "Мария"},
        "role_change": {"telegram_id": 8002, "role": "owner"},
        "remove_staff": 8001,
        "settings": {"invoice_typed": "3,5"},
        "bill_to_cancel": to_cancel,
    });

    let mut browser = run_browser_script("miniapp.mjs", &[config.to_string()], "miniapp");
    let shots = browser.screenshots.clone();

    // The first visit is done: give the customer a phone and a history longer than a page.
    let visited = browser.next_line().await;
    let id = visited["customer_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if visited["phase"] == "visited" {
        sqlx::query("update customers set phone_number = '+77011234567' where org_id = $1 and id = $2::bigint")
            .bind(org)
            .bind(&id)
            .execute(&app.db.pool)
            .await
            .expect("phone");
        for n in 1..HISTORY_ENTRIES {
            let amount = if n == 1 { "1234.56" } else { "10" };
            let (status, body) = send(
                app.admin(
                    reqwest::Method::POST,
                    &format!("/admin/v1/orgs/{org}/customers/{id}/bonuses"),
                )
                .json(&json!({"op": "accrue", "amount": amount, "description": format!("Покупка {n}")})),
            )
            .await;
            assert_eq!(status, 201, "{body}");
        }
    }
    browser.say("go").await;
    let seen = browser.finish().await;

    // The first visit, through the friend's link: in Russian, the code applied, welcomed.
    assert_eq!(visited["phase"], "visited", "{visited}");
    assert_eq!(seen["lang"], "ru");
    assert_eq!(seen["ready_called"], 1);
    assert_eq!(seen["expanded"], true);
    let note = seen["referral_note"].as_str().unwrap_or_default();
    assert!(
        note.contains("Добро пожаловать в «Чайный дом»")
            && note.contains(&promo)
            && note.contains("применён")
            && note.contains("50 ₸"),
        "{note}"
    );
    assert_eq!(seen["welcome_haptic"], true);
    assert_eq!(seen["tabs_for_customer"], false);
    // Tried once: the second visit with the same start_param says nothing more.
    assert_eq!(seen["referral_note_again"], false);

    // Balances as people read them, the history by scrolling, the code and the share link.
    assert_eq!(seen["bonuses"], "1 524,56 ₸", "{seen}");
    assert_eq!(seen["referral_bonuses"], "0 ₸");
    assert_eq!(seen["debt"], "0 ₸");
    assert_eq!(seen["history_first_page"], 20);
    assert_eq!(seen["history_after_scroll"], HISTORY_ENTRIES);
    assert_eq!(seen["history_pages"], 2);
    let first_row = seen["history_first_row"].as_str().unwrap_or_default();
    assert!(
        first_row.contains("Покупка 25") && first_row.contains("+10 ₸"),
        "{first_row}"
    );
    let last_row = seen["history_last_row"].as_str().unwrap_or_default();
    assert!(last_row.contains("+50 ₸"), "{last_row}");
    assert_eq!(seen["code_digits"], json!(id));
    assert_eq!(seen["code_image"]["blob"], true);
    assert!(
        seen["code_image"]["width"].as_u64().unwrap_or(0) > 0,
        "{seen}"
    );
    assert_eq!(seen["promo_code"], json!(format!("PROMO{id}")));
    let share_link =
        loyalty::access::share_link(Some(BOT_USERNAME), Some(SHORT_NAME), &format!("PROMO{id}"))
            .expect("a link");
    let opened = seen["share_opened"].as_str().unwrap_or_default();
    let opened = reqwest::Url::parse(opened).expect("a URL");
    assert_eq!(opened.host_str(), Some("t.me"));
    assert_eq!(opened.path(), "/share/url");
    let query: std::collections::HashMap<_, _> = opened.query_pairs().into_owned().collect();
    assert_eq!(query.get("url"), Some(&share_link));
    assert!(query["text"].contains(&format!("PROMO{id}")), "{query:?}");
    let contacts = seen["contacts"].as_array().expect("contacts");
    for href in [
        "tel:+77472479197",
        "https://wa.me/77472479197",
        "https://t.me/tea_house",
    ] {
        assert!(
            contacts.iter().any(|c| c["href"] == href),
            "{href} in {contacts:?}"
        );
    }
    // Asked for write access, and the answer was recorded.
    assert_eq!(seen["write_access_visible"], true);
    assert_eq!(seen["write_access_asked"], 1);
    let allowed: bool = sqlx::query_scalar(
        "select messages_allowed_at is not null from customers where org_id = $1 and id = $2::bigint",
    )
    .bind(org)
    .bind(&id)
    .fetch_one(&app.db.pool)
    .await
    .expect("customer");
    assert!(allowed);

    // The cashier, in English: found by phone, one accrual for a double tap, a bill for the POS.
    assert_eq!(seen["cashier_lang"], "en");
    assert_eq!(seen["cashier_tabs"], true);
    assert_eq!(seen["cashier_owner_buttons"], 0);
    assert_eq!(seen["scan_offered"], true);
    assert!(
        seen["search_result"]
            .as_str()
            .unwrap_or_default()
            .contains("Болат Ким"),
        "{seen}"
    );
    assert_eq!(seen["back_button_on_card"], true);
    assert_eq!(seen["card_before"], "1,524.56 ₸");
    assert_eq!(seen["accrued_line"], "Accrued 100 ₸.");
    assert_eq!(seen["card_after"], "1,624.56 ₸");
    assert_eq!(
        seen["bill_line"],
        "Bill no. MA-1001 created: the till will see it."
    );
    assert_eq!(seen["back_button_home"], false);
    assert!(
        seen["open_bill"]
            .as_str()
            .unwrap_or_default()
            .contains("1,000 ₸"),
        "{seen}"
    );
    let accruals: Vec<(String, Option<String>)> = sqlx::query_as(
        "select amount::text, actor from ledger_entries
         where org_id = $1 and customer_id = $2::bigint and description = 'Birthday gift'",
    )
    .bind(org)
    .bind(&id)
    .fetch_all(&app.db.pool)
    .await
    .expect("entries");
    assert_eq!(
        accruals.len(),
        1,
        "a double tap is one accrual: {accruals:?}"
    );
    assert_eq!(accruals[0].1.as_deref(), Some("staff:8001"));
    // Scanned, another shop's customer is not one of this shop's: the server's refusal is shown.
    assert_eq!(seen["refused"], "404: customer not found");
    // The same cashier's credentials reach nothing of the other shop: signed by this shop's bot
    // they are not the other's (401); signed by the other's, where they are only a customer, 403.
    let foreign = format!("/admin/v1/orgs/{other}/customers/{stranger}");
    let as_other_customer = init_data(
        json!({"id": 8001, "first_name": "Dana", "language_code": "en"}),
        None,
        OTHER_BOT_TOKEN,
    );
    for (init, expected) in [(&cashier, 401), (&as_other_customer, 403)] {
        let (status, body) = send(
            app.http
                .get(app.url(&foreign))
                .header("Authorization", format!("tma {init}")),
        )
        .await;
        assert_eq!(status, expected, "{body}");
    }
    assert_eq!(seen["scan_closed"], true);
    assert_eq!(seen["scan_text"], "Point the camera at the customer's code");
    assert!(
        seen["cashier_haptics"]
            .as_array()
            .is_some_and(|h| h.contains(&json!("notification:success"))
                && h.contains(&json!("notification:error"))),
        "{seen}"
    );

    // The owner added a cashier, who is on the staff now; the trail shows the staff's changes.
    assert_eq!(seen["owner_buttons"], 3);
    assert_eq!(seen["staff_added_role"], "cashier");
    assert!(
        seen["staff_added"]
            .as_str()
            .unwrap_or_default()
            .contains("Мария"),
        "{seen}"
    );
    let (status, staff) = app.get(&format!("/admin/v1/orgs/{org}/staff")).await;
    assert_eq!(status, 200, "{staff}");
    assert!(staff.to_string().contains("8002"), "{staff}");
    assert!(seen["audit_rows"].as_u64().unwrap_or(0) >= 1, "{seen}");
    assert_eq!(seen["settings_invoice"], "2");

    // The owner made Мария an owner and removed the first cashier, after confirming.
    assert_eq!(seen["role_line"], "Роль изменена.");
    assert_eq!(seen["role_shown"], "owner");
    assert_eq!(seen["remove_confirm"], "Удалить Касса 1 из сотрудников?");
    assert_eq!(seen["removed_line"], "Сотрудник удалён.");
    assert_eq!(seen["staff_left"], json!(["8002", "9001"]), "{seen}");
    let roles: Vec<(i64, String)> = sqlx::query_as(
        "select telegram_id, role from staff where org_id = $1 order by telegram_id",
    )
    .bind(org)
    .fetch_all(&app.db.pool)
    .await
    .expect("staff");
    assert_eq!(
        roles,
        [(8002, "owner".to_owned()), (9001, "owner".to_owned())]
    );
    // The removed cashier reaches nothing of the shop any more.
    let (status, _) = send(
        app.http
            .get(app.url(&format!("/admin/v1/orgs/{org}/customers/{id}")))
            .header("Authorization", format!("tma {cashier}")),
    )
    .await;
    assert_eq!(status, 403);

    // The settings saved as typed, with a decimal comma.
    assert_eq!(seen["settings_line"], "Настройки сохранены.");
    assert_eq!(
        seen["settings_invoice_after"], "3,5",
        "shown as a Russian speaker writes it"
    );
    let saved: bool = sqlx::query_scalar(
        "select invoice_bonus_percentage = 3.5 and referral_promo_bonus = 50 from organizations where id = $1",
    )
    .bind(org)
    .fetch_one(&app.db.pool)
    .await
    .expect("settings");
    assert!(saved, "3.5 % stored, the other settings kept");

    // The owner cancelled the friend's bill; the cashier's stays open for the till.
    assert_eq!(seen["bills_before_cancel"], 2, "{seen}");
    assert_eq!(seen["bills_after_cancel"], 1, "{seen}");
    assert!(
        seen["cancel_line"]
            .as_str()
            .is_some_and(|l| l.contains("отменён")),
        "{seen}"
    );
    let (_, cancelled) = app
        .get(&format!("/admin/v1/orgs/{org}/bills/{to_cancel}"))
        .await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let number = cancelled["number"].as_str().unwrap_or_default();
    assert_eq!(
        seen["cancel_confirm"],
        json!(format!(
            "Отменить счёт № {number}? Касса его больше не увидит."
        )),
        "asked first"
    );

    // The POS sees the bill with its bonus payment, and the sale is applied against it.
    let (status, listed) = app.pos_get(&pos, "/api/v2/list?number=MA-1001").await;
    assert_eq!(status, 200, "{listed}");
    let bill_id = listed[0]["id"].as_i64().expect("the bill in the POS list");
    assert_eq!(listed[0]["summ"], json!(1000));
    let (_, byid) = app
        .pos_get(&pos, &format!("/api/v2/bill/byid/{bill_id}"))
        .await;
    assert_eq!(byid["prepayment"], json!(50), "{byid}");
    let worker = app.start_worker();
    let sale = receipt_event("ev-miniapp", "rc-miniapp", Some(bill_id), "1000");
    assert_eq!(app.post_receipt(&pos, &sale).await.0, 200);
    app.wait_receipt(org, "ev-miniapp", "processed").await;
    worker.stop().await;
    let (_, read) = app
        .get(&format!("/admin/v1/orgs/{org}/bills/{bill_id}"))
        .await;
    assert_eq!(read["status"], "paid", "{read}");

    for screen in [
        "customer-first-visit",
        "customer",
        "customer-history",
        "cashier-search",
        "cashier-card",
        "cashier-bills",
        "cashier-refused",
        "owner-staff",
        "owner-audit",
        "owner-settings",
        "owner-staff-changed",
        "owner-settings-saved",
        "owner-bills",
        "owner-bill-cancelled",
    ] {
        for theme in ["light", "dark"] {
            assert!(
                shots.join(format!("{screen}-{theme}.png")).exists(),
                "{screen}-{theme}.png"
            );
        }
    }
}
