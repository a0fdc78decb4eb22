//! The accountant's reports equal the ledger to the cent: a varied set of entries (every source,
//! several days, two time zones around a day boundary) is posted, and every figure of the
//! liability and activity reports is recomputed here from the stored entries and lots by plain
//! iteration; the CSV says what the JSON says.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use e2e::{TestApp, seed_settings, send};
use loyalty::ledger::{EntryKind, Source, Wallet};
use loyalty::lots::{self, NewLot};
use loyalty::time::{OrgTimeZone, Stamp};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{Value, json};

fn d(text: &str) -> Decimal {
    text.parse().expect("decimal")
}

fn num(value: &Value) -> Decimal {
    value.to_string().trim_matches('"').parse().expect("number")
}

fn instant(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("instant")
        .to_utc()
}

async fn shop(app: &TestApp, zone: &str) -> i64 {
    app.create_org(
        &json!({"name": "Shop", "time_zone": zone, "bonus_program_settings": seed_settings()}),
    )
    .await
}

/// One movement of the varied set: who (0 the buyer, 1 the referrer), wallet, kind, source,
/// amount, when.
type Movement = (
    usize,
    &'static str,
    EntryKind,
    Source,
    &'static str,
    &'static str,
);

/// Every source, over several days; several around 2026-03-20 19:00–21:30 UTC, which is the
/// evening of the 20th in Moscow (+03:00) and past midnight on the 21st in Almaty (+05:00).
const MOVEMENTS: &[Movement] = &[
    (
        0,
        "main",
        EntryKind::Accrual,
        Source::Import,
        "500",
        "2026-03-01T10:00:00Z",
    ),
    (
        0,
        "main",
        EntryKind::Deduction,
        Source::Import,
        "100",
        "2026-03-02T10:00:00Z",
    ),
    (
        0,
        "main",
        EntryKind::Accrual,
        Source::Welcome,
        "15",
        "2026-03-19T23:59:00Z",
    ),
    (
        0,
        "main",
        EntryKind::Accrual,
        Source::Operator,
        "200",
        "2026-03-20T19:30:00Z",
    ),
    (
        0,
        "pending",
        EntryKind::Accrual,
        Source::Receipt,
        "30.55",
        "2026-03-20T20:59:59Z",
    ),
    (
        0,
        "main",
        EntryKind::Deduction,
        Source::Receipt,
        "50.10",
        "2026-03-20T21:00:00Z",
    ),
    (
        1,
        "referral_pending",
        EntryKind::Accrual,
        Source::Receipt,
        "12.34",
        "2026-03-20T21:30:00Z",
    ),
    (
        0,
        "main",
        EntryKind::Accrual,
        Source::Refund,
        "10.05",
        "2026-03-21T05:00:00Z",
    ),
    (
        0,
        "pending",
        EntryKind::Deduction,
        Source::Refund,
        "5.5",
        "2026-03-21T05:00:00Z",
    ),
    (
        0,
        "debt",
        EntryKind::Accrual,
        Source::Operator,
        "300",
        "2026-03-21T19:15:00Z",
    ),
    (
        0,
        "main",
        EntryKind::Accrual,
        Source::Promo,
        "50",
        "2026-03-22T12:00:00Z",
    ),
    (
        0,
        "main",
        EntryKind::Accrual,
        Source::Birthday,
        "25",
        "2026-03-22T20:00:00Z",
    ),
    (
        0,
        "pending",
        EntryKind::Deduction,
        Source::Activation,
        "25.05",
        "2026-03-23T18:59:00Z",
    ),
    (
        0,
        "main",
        EntryKind::Accrual,
        Source::Activation,
        "25.05",
        "2026-03-23T18:59:00Z",
    ),
    (
        1,
        "referral_pending",
        EntryKind::Deduction,
        Source::Activation,
        "12.34",
        "2026-03-23T19:01:00Z",
    ),
    (
        1,
        "referral",
        EntryKind::Accrual,
        Source::Activation,
        "12.34",
        "2026-03-23T19:01:00Z",
    ),
    (
        0,
        "main",
        EntryKind::Deduction,
        Source::Expiry,
        "20",
        "2026-03-24T00:00:00Z",
    ),
    (
        0,
        "main",
        EntryKind::Deduction,
        Source::Operator,
        "7.77",
        "2026-03-25T03:00:00Z",
    ),
    (
        1,
        "referral",
        EntryKind::Deduction,
        Source::Operator,
        "2.34",
        "2026-03-25T03:00:00Z",
    ),
    (
        1,
        "referral",
        EntryKind::Deduction,
        Source::Receipt,
        "5",
        "2026-03-25T10:00:00Z",
    ),
    (
        0,
        "debt",
        EntryKind::Payment,
        Source::Operator,
        "120.5",
        "2026-03-25T19:15:00Z",
    ),
];

/// Posts [`MOVEMENTS`] for two new customers of `org`, and lots expiring after now.
async fn post_movements(app: &TestApp, org: i64, zone: OrgTimeZone) {
    let buyer: i64 = app.customer(org, "Alex").await.parse().expect("id");
    let referrer: i64 = app.customer(org, "Dana").await.parse().expect("id");
    let people = [buyer, referrer];
    let now = Utc::now();
    let lot = |who: usize, wallet, amount: &str, pending, days: i64| NewLot {
        org_id: org,
        customer_id: people[who],
        wallet,
        amount: d(amount),
        pending,
        activates_at: now,
        expires_at: Some(now + Duration::days(days)),
        source: Source::Receipt,
        source_ref: None,
        invoice_id: None,
    };
    let mut tx = app.db.pool.begin().await.expect("tx");
    // Written as the services write them, in this order (each moves its wallet by the trigger).
    for &(who, wallet, kind, source, amount, at) in MOVEMENTS {
        let stamp = Stamp::in_zone(instant(at), zone);
        sqlx::query(
            "insert into ledger_entries (org_id, customer_id, wallet, kind, amount, description,
                 source, source_ref, transaction_type, occurred_at, utc_offset_seconds)
             values ($1, $2, $3, $4, $5, 'проверка отчёта', $6, $7,
                     case $3 when 'main' then 'bonus' when 'debt' then 'debt' else $3 end, $8, $9)",
        )
        .bind(org)
        .bind(people[who])
        .bind(wallet)
        .bind(kind)
        .bind(d(amount))
        .bind(source)
        .bind(at)
        .bind(stamp.utc())
        .bind(stamp.offset_seconds())
        .execute(&mut *tx)
        .await
        .expect("entry");
    }
    lots::open(
        &mut tx,
        &[
            lot(0, Wallet::Main, "11.11", false, 5),
            lot(0, Wallet::Main, "22.22", false, 20),
            lot(0, Wallet::Main, "33.33", true, 60),
            lot(0, Wallet::Main, "44.44", false, 200),
            lot(1, Wallet::Referral, "5", false, 8),
        ],
    )
    .await
    .expect("lots");
    tx.commit().await.expect("commit");
}

/// A lot as stored: wallet, remaining, expires_at, created_at.
type StoredLot = (String, Decimal, Option<DateTime<Utc>>, DateTime<Utc>);

#[derive(sqlx::FromRow)]
struct Stored {
    occurred_at: DateTime<Utc>,
    source: String,
    wallet: String,
    kind: String,
    amount: Decimal,
}

async fn stored_entries(app: &TestApp, org: i64) -> Vec<Stored> {
    sqlx::query_as(
        "select occurred_at, source, wallet, kind, amount from ledger_entries where org_id = $1",
    )
    .bind(org)
    .fetch_all(&app.db.pool)
    .await
    .expect("entries")
}

/// The activity figure of a stored entry, as the README defines them.
fn figure(e: &Stored) -> Option<&'static str> {
    let credit = e.kind == "accrual";
    if e.wallet == "debt" {
        return Some(if credit { "debt_added" } else { "debt_paid" });
    }
    let referral_wallet = e.wallet.starts_with("referral");
    Some(match (e.source.as_str(), credit) {
        ("receipt", true) if referral_wallet => "referral",
        ("receipt", true) => "accrued",
        ("receipt", false) => "spent",
        ("refund", true) => "refund_given_back",
        ("refund", false) => "refund_taken_back",
        ("expiry", false) => "expired",
        ("promo", true) => "promo",
        ("welcome", true) => "welcome",
        ("birthday", true) => "birthday",
        ("operator", true) => "operator_accrued",
        ("operator", false) => "operator_deducted",
        ("activation", true) => "activated",
        ("import", true) => "imported_accrued",
        ("import", false) => "imported_deducted",
        _ => return None,
    })
}

/// Per local day, per figure, from the entries.
fn expected_activity(
    entries: &[Stored],
    zone: OrgTimeZone,
) -> BTreeMap<NaiveDate, BTreeMap<&'static str, Decimal>> {
    let mut days: BTreeMap<NaiveDate, BTreeMap<&'static str, Decimal>> = BTreeMap::new();
    for e in entries {
        let Some(figure) = figure(e) else { continue };
        let day = e.occurred_at.with_timezone(&zone.0).date_naive();
        *days.entry(day).or_default().entry(figure).or_default() += e.amount;
    }
    days
}

/// Parses a CSV answer into its header and rows.
fn csv_rows(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut lines = text.lines();
    let header = lines
        .next()
        .expect("header")
        .split(',')
        .map(str::to_owned)
        .collect();
    let rows = lines
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    (header, rows)
}

async fn csv(app: &TestApp, path: &str) -> String {
    let response = app
        .admin(Method::GET, path)
        .header("Accept", "text/csv")
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("type")
            .starts_with("text/csv")
    );
    response.text().await.expect("body")
}

#[tokio::test]
async fn the_activity_report_equals_the_ledger_per_local_day_in_two_time_zones() {
    let app = TestApp::spawn().await;
    for zone_name in ["Asia/Almaty", "Europe/Moscow"] {
        let zone: OrgTimeZone = zone_name.parse().expect("zone");
        let org = shop(&app, zone_name).await;
        post_movements(&app, org, zone).await;
        let path =
            format!("/admin/v1/orgs/{org}/reports/activity?from=2026-02-28&to=2026-03-31&by=day");
        let (status, report) = app.get(&path).await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["time_zone"], zone_name);
        let days = report["days"].as_array().expect("days");
        assert_eq!(
            days.len(),
            32,
            "every day of the range, empty ones included"
        );

        let expected = expected_activity(&stored_entries(&app, org).await, zone);
        let mut checked = 0;
        for day in days {
            let date: NaiveDate = day["date"].as_str().expect("date").parse().expect("date");
            let want = expected.get(&date);
            for (key, value) in day.as_object().expect("day") {
                if key == "date" {
                    continue;
                }
                let want = want
                    .and_then(|w| w.get(key.as_str()))
                    .copied()
                    .unwrap_or_default();
                assert_eq!(num(value), want, "{zone_name} {date} {key}");
                checked += usize::from(!want.is_zero());
            }
        }
        // Every movement but the activations' pending debits counts in one figure of one day.
        assert_eq!(checked, expected.values().map(BTreeMap::len).sum::<usize>());

        // The day boundary: 19:30–21:30 UTC on the 20th is the 20th in Moscow, the 21st in Almaty.
        let on = |date: &str, key: &str| {
            days.iter()
                .find(|d| d["date"] == date)
                .map(|d| num(&d[key]))
                .expect("day")
        };
        if zone_name == "Asia/Almaty" {
            assert_eq!(on("2026-03-21", "operator_accrued"), d("200"));
            assert_eq!(on("2026-03-21", "spent"), d("50.1"));
            assert_eq!(on("2026-03-20", "operator_accrued"), Decimal::ZERO);
            assert_eq!(on("2026-03-21", "accrued"), d("30.55"));
            assert_eq!(on("2026-03-21", "referral"), d("12.34"));
            assert_eq!(on("2026-03-20", "welcome"), d("15"));
        } else {
            assert_eq!(on("2026-03-20", "operator_accrued"), d("200"));
            assert_eq!(on("2026-03-20", "accrued"), d("30.55"));
            assert_eq!(on("2026-03-20", "spent"), Decimal::ZERO);
            assert_eq!(on("2026-03-21", "spent"), d("50.1"));
            assert_eq!(on("2026-03-21", "referral"), d("12.34"));
            assert_eq!(on("2026-03-20", "welcome"), d("15"));
        }

        // The CSV: a header, one row per day, the same figures.
        let (header, rows) = csv_rows(&csv(&app, &path).await);
        assert_eq!(header[0], "date");
        assert_eq!(header.len(), days[0].as_object().expect("day").len());
        assert_eq!(rows.len(), days.len());
        for (row, day) in rows.iter().zip(days) {
            assert_eq!(row[0], day["date"].as_str().expect("date"));
            for (name, cell) in header.iter().zip(row).skip(1) {
                assert_eq!(
                    d(cell),
                    num(&day[name.as_str()]),
                    "{zone_name} {} {name}",
                    row[0]
                );
            }
        }
    }
}

#[tokio::test]
async fn the_liability_report_equals_the_ledger_and_the_lots_at_an_instant() {
    let app = TestApp::spawn().await;
    let zone = OrgTimeZone::default();
    let org = shop(&app, "Asia/Almaty").await;
    post_movements(&app, org, zone).await;
    let entries = stored_entries(&app, org).await;
    let lots: Vec<StoredLot> = sqlx::query_as(
        "select wallet, remaining, expires_at, created_at from bonus_lots where org_id = $1",
    )
    .bind(org)
    .fetch_all(&app.db.pool)
    .await
    .expect("lots");

    for at in [
        None,
        Some("2026-03-21T03:00:00+05:00"),
        Some("2026-03-23T23:59:59Z"),
    ] {
        let path = match at {
            None => format!("/admin/v1/orgs/{org}/reports/liability"),
            Some(at) => format!(
                "/admin/v1/orgs/{org}/reports/liability?at={}",
                at.replace('+', "%2B")
            ),
        };
        let (status, report) = app.get(&path).await;
        assert_eq!(status, 200, "{report}");
        let instant = DateTime::parse_from_rfc3339(report["at"].as_str().expect("at"))
            .expect("at")
            .to_utc();
        if let Some(at) = at {
            assert_eq!(
                instant,
                DateTime::parse_from_rfc3339(at).expect("at").to_utc()
            );
        }
        let balance = |wallet: &str| -> Decimal {
            entries
                .iter()
                .filter(|e| e.wallet == wallet && e.occurred_at <= instant)
                .map(|e| {
                    if e.kind == "accrual" {
                        e.amount
                    } else {
                        -e.amount
                    }
                })
                .sum()
        };
        let expiring = |wallet: &str, days: i64| -> Decimal {
            let until = instant + Duration::days(days);
            let still: Decimal = lots
                .iter()
                .filter(|(w, left, expires, created)| {
                    w == wallet
                        && *left > Decimal::ZERO
                        && *created <= instant
                        && expires.is_some_and(|e| e <= until)
                })
                .map(|l| l.1)
                .sum();
            let burned: Decimal = entries
                .iter()
                .filter(|e| {
                    e.wallet.starts_with(wallet)
                        && e.source == "expiry"
                        && e.occurred_at > instant
                        && e.occurred_at <= until
                })
                .map(|e| e.amount)
                .sum();
            still + burned
        };
        let wallets = report["wallets"].as_array().expect("wallets");
        let names: Vec<&str> = wallets
            .iter()
            .map(|w| w["wallet"].as_str().expect("name"))
            .collect();
        assert_eq!(names, ["main", "referral", "debt"]);
        for w in wallets {
            let name = w["wallet"].as_str().expect("name");
            assert_eq!(num(&w["balance"]), balance(name), "{at:?} {name} balance");
            let pending = match name {
                "main" => balance("pending"),
                "referral" => balance("referral_pending"),
                _ => Decimal::ZERO,
            };
            assert_eq!(num(&w["pending"]), pending, "{at:?} {name} pending");
            for days in [7, 30, 90] {
                let want = if name == "debt" {
                    Decimal::ZERO
                } else {
                    expiring(name, days)
                };
                assert_eq!(
                    num(&w[format!("expiring_{days}_days").as_str()]),
                    want,
                    "{at:?} {name} {days} days"
                );
            }
        }
        // The CSV: one row per wallet, the same figures.
        let (header, rows) = csv_rows(&csv(&app, &path).await);
        assert_eq!(header[..2], ["at", "wallet"]);
        assert_eq!(rows.len(), 3);
        for (row, w) in rows.iter().zip(wallets) {
            assert_eq!(row[1], w["wallet"].as_str().expect("wallet"));
            for (name, cell) in header.iter().zip(row).skip(2) {
                assert_eq!(d(cell), num(&w[name.as_str()]), "{at:?} {name}");
            }
        }
    }

    // Figures worth reading by eye: at 03:00 on the 21st in Almaty the pending accrual is there,
    // the expiry of the 24th lies within 7 days; today, the lots of 5 and 20 days.
    let at = "2026-03-21T03:00:00%2B05:00";
    let (_, past) = app
        .get(&format!("/admin/v1/orgs/{org}/reports/liability?at={at}"))
        .await;
    assert_eq!(num(&past["wallets"][0]["pending"]), d("30.55"));
    assert_eq!(num(&past["wallets"][0]["expiring_7_days"]), d("20"));
    let (_, now) = app
        .get(&format!("/admin/v1/orgs/{org}/reports/liability"))
        .await;
    assert_eq!(num(&now["wallets"][0]["balance"]), d("647.23"));
    assert_eq!(num(&now["wallets"][0]["expiring_7_days"]), d("11.11"));
    assert_eq!(num(&now["wallets"][0]["expiring_30_days"]), d("33.33"));
    assert_eq!(num(&now["wallets"][0]["expiring_90_days"]), d("66.66"));
    assert_eq!(num(&now["wallets"][1]["balance"]), d("5"));
    assert_eq!(num(&now["wallets"][1]["expiring_30_days"]), d("5"));
    assert_eq!(num(&now["wallets"][2]["balance"]), d("179.5"));
}

#[tokio::test]
async fn report_parameters_are_checked_and_the_reports_are_the_organizations_own() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let activity = format!("/admin/v1/orgs/{org}/reports/activity");
    let liability = format!("/admin/v1/orgs/{org}/reports/liability");
    for (path, field) in [
        (format!("{liability}?at=yesterday"), "at"),
        (format!("{liability}?at=2026-03-21T00:00:00"), "at"),
        (format!("{liability}?at=1900-01-01T00:00:00Z"), "at"),
        (format!("{activity}?from=2026-13-01"), "from"),
        (format!("{activity}?to=2026-03-32"), "to"),
        (format!("{activity}?from=2026-03-02&to=2026-03-01"), "to"),
        (format!("{activity}?from=2025-01-01&to=2026-01-02"), "to"),
        (format!("{activity}?by=week"), "by"),
    ] {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, 422, "{path}: {body}");
        assert_eq!(body["error"]["field"], field, "{path}");
    }
    // 366 days is the longest report; without dates, the last 30 days.
    let (status, long) = app
        .get(&format!("{activity}?from=2024-01-01&to=2024-12-31"))
        .await;
    assert_eq!(status, 200, "{long}");
    assert_eq!(long["days"].as_array().map(Vec::len), Some(366));
    let (status, recent) = app.get(&activity).await;
    assert_eq!(status, 200, "{recent}");
    assert_eq!(recent["days"].as_array().map(Vec::len), Some(30));

    let (status, _) = app.get("/admin/v1/orgs/999999/reports/liability").await;
    assert_eq!(status, 404);
    let (status, _) = app.get("/admin/v1/orgs/999999/reports/activity").await;
    assert_eq!(status, 404);
    let (status, _) = send(app.http.get(app.url(&liability))).await;
    assert_eq!(status, 401);
    let (status, _) = send(
        app.http
            .get(app.url(&activity))
            .header("Accept", "text/csv"),
    )
    .await;
    assert_eq!(status, 401);
}
