//! `loadgen scale`: one organization the size of a large shop chain (10^6 customers, 10^7 ledger
//! entries, 10^6 receipts with their bills, invoices and notifications), filled at COPY speed, and
//! the time of every read an operator, a customer or a POS makes against it through the real
//! ingest in-process; then the workers' receipts/s on it against the same figure on an empty
//! database in the same run, since a rate only means something beside its baseline. Two more empty
//! databases, each without what one migration added (the wallet totals' triggers, the scale
//! indexes), give what those cost the worker, measured in turn with the first one.
//!
//! The fill writes rows as the program would have written them, without running the per-row
//! triggers (at 10^7 entries the wallet trigger alone would take most of an hour): the COPY session
//! sets `session_replication_role = replica`, which needs a superuser (the local `postgres` user
//! is one), and what the triggers would have set is then set with set-based SQL (each wallet = the
//! sum of its entries, one opening lot per non-empty wallet, as
//! `migrations/20261201000001_rules_wave.sql` writes them, the organization's wallet totals as the
//! sum of its wallets, the operations summary's status counts counted again from the rows) and
//! checked before anything is measured.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, TimeDelta, Utc};
use loyalty::queue::{Broker, Topology};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};

use crate::setup::{Environment, Scratch, copy_lines, with_database};
use crate::{http, worker};

/// The filled organization's name, by which `--reuse` finds it.
const ORG_NAME: &str = "Loadgen scale";
/// The organization's bot (Mini App init data is signed with it; nothing is sent to Telegram).
const BOT_TOKEN: &str = "123456789:loadgen-scale-bot-token-for-signing";
/// Telegram ids of the customers that have one start here.
const TELEGRAM_IDS: i64 = 8_000_000_000;
/// Customers with a long history (the first ones), for the Mini App's deep pages.
const REGULARS: usize = 100;
/// Entries of each regular.
const REGULAR_ENTRIES: usize = 1000;
/// Target of every read's p99.
const READ_P99_TARGET_MS: f64 = 50.0;
/// The worker on the filled database may be this much slower than on the empty one.
const WORKER_TOLERANCE: f64 = 0.10;

#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    /// Customers of the organization; each has `--entries` ledger entries and one receipt.
    #[arg(long, default_value_t = 1_000_000)]
    pub customers: usize,
    /// Ledger entries of each customer (the first 100 customers have 1000 each, for deep
    /// Mini App histories).
    #[arg(long, default_value_t = 10)]
    pub entries: usize,
    /// Requests timed for each read.
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
    /// Leave out the pages read by a deep `offset` (their cost follows the offset by design, and
    /// at 10^6 customers each takes seconds); the pages after a cursor are still timed.
    #[arg(long)]
    pub skip_offset_reads: bool,
    /// Sell every filled receipt within the last 24 hours instead of over a year: a day of 10^6
    /// status changes, the operations summary's worst case.
    #[arg(long)]
    pub busy_day: bool,
    /// Receipts the worker applies on each database.
    #[arg(long, default_value_t = 3000)]
    pub worker_receipts: usize,
    /// Rounds of the empty-database worker runs (each database once a round, in turn); each
    /// database's figure is the median of its rounds.
    #[arg(long, default_value_t = 3)]
    pub worker_rounds: usize,
    /// Batches the worker applies at once (`WORKER_CONCURRENCY`).
    #[arg(long, default_value_t = 4)]
    pub worker_concurrency: u16,
    /// Most receipts in one worker transaction (`WORKER_BATCH`).
    #[arg(long, default_value_t = 250)]
    pub worker_batch: u16,
    /// Fill this database (created, must not exist) and keep it afterwards for `--reuse`.
    #[arg(long, conflicts_with = "reuse", value_parser = database_name)]
    pub keep: Option<String>,
    /// Measure on a database an earlier `--keep` filled, without filling (it is kept).
    #[arg(long, value_parser = database_name)]
    pub reuse: Option<String>,
    /// Where the JSON report goes (default: the workspace's `target/loadgen-scale.json`).
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub servers: crate::setup::Servers,
}

/// A database name safe to write into `create database` (lower-case letters, digits, `_`).
fn database_name(name: &str) -> Result<String, String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if first_ok
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        Ok(name.to_owned())
    } else {
        Err("lower-case letters, digits and _, at most 63, not starting with a digit".to_owned())
    }
}

pub async fn main(args: ScaleArgs) -> anyhow::Result<()> {
    if args.customers < REGULARS || args.entries < 2 || args.samples == 0 {
        bail!("--customers must be at least {REGULARS}, --entries at least 2, --samples positive");
    }
    if args.worker_receipts == 0
        || args.worker_concurrency == 0
        || args.worker_batch == 0
        || args.worker_rounds == 0
    {
        bail!(
            "--worker-receipts, --worker-concurrency, --worker-batch and --worker-rounds must be positive"
        );
    }
    let mut big = Scratch::new(&args.servers.database_url, &args.servers.amqp_url)?;
    let named = args.keep.as_ref().or(args.reuse.as_ref());
    if let Some(name) = named {
        big.db_name.clone_from(name);
    }
    let empty = Baseline::ALL
        .iter()
        .map(|_| Scratch::new(&args.servers.database_url, &args.servers.amqp_url))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let outcome = tokio::select! {
        outcome = run(&args, &big, &empty) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    eprintln!(
        "cleaning up: the queues of {} and the empty databases",
        big.tag
    );
    let mut cleaned = big.delete_queues().await;
    for scratch in &empty {
        cleaned = cleaned.and(scratch.clean().await);
    }
    match named {
        Some(name) => eprintln!("kept database {name} (drop it with `dropdb {name}`)"),
        None => cleaned = cleaned.and(big.drop_databases().await),
    }
    let report = outcome?;
    cleaned?;
    report.print();
    let path = args
        .report
        .clone()
        .unwrap_or_else(|| crate::target_dir().join("loadgen-scale.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&report.json())?)
        .with_context(|| format!("write {}", path.display()))?;
    println!("report written to {}", path.display());
    Ok(())
}

async fn run(args: &ScaleArgs, big: &Scratch, empty: &[Scratch]) -> anyhow::Result<Report> {
    let load_at_start = load_average();
    let (db_url, db) = if args.reuse.is_some() {
        let url = with_database(&big.server_url, &big.db_name)?;
        let db = loyalty::db::connect(&url, 4).await?;
        loyalty::db::migrate(&db).await?;
        (url, db)
    } else {
        big.create_database().await?
    };
    let env = Environment::serve(&args.servers.amqp_url, big, db_url, db).await?;
    let outcome = measure_filled(args, &env, big).await;
    env.stop().await;
    let (fill, size, reads, filled_worker) = outcome?;
    let baselines = measure_empty(args, empty).await?;
    Ok(Report {
        customers: args.customers,
        fill,
        size,
        reads,
        filled_worker,
        baselines,
        load: (load_at_start, load_average()),
    })
}

/// The empty databases the worker is measured on: as migrated (the figure the filled database is
/// compared with), and without what one migration added, for what that costs the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Baseline {
    AsMigrated,
    /// Without what `20261204000001_org_wallet_totals.sql` adds to each write: its triggers and
    /// its index of expiring lots.
    NoWalletTotals,
    /// Without the indexes of `20261203000001_scale_indexes.sql` (the status index as before it).
    NoScaleIndexes,
    /// Without the triggers of `20261205000001_status_counts.sql` that log every status change
    /// (the fold still runs, and finds nothing).
    NoStatusCounts,
}

impl Baseline {
    const ALL: [Baseline; 4] = [
        Baseline::AsMigrated,
        Baseline::NoWalletTotals,
        Baseline::NoScaleIndexes,
        Baseline::NoStatusCounts,
    ];

    fn name(self) -> &'static str {
        match self {
            Baseline::AsMigrated => "empty database",
            Baseline::NoWalletTotals => "empty, without the wallet totals (triggers, lots index)",
            Baseline::NoScaleIndexes => "empty, without the scale indexes",
            Baseline::NoStatusCounts => "empty, without the status change log (triggers)",
        }
    }

    /// What undoes the migration's additions on a freshly migrated database.
    fn undo(self) -> &'static [&'static str] {
        match self {
            Baseline::AsMigrated => &[],
            Baseline::NoWalletTotals => &[
                "drop trigger customers_wallet_change_insert on customers",
                "drop trigger customers_wallet_change_update on customers",
                "drop trigger customers_wallet_change_delete on customers",
                "drop trigger customers_wallet_totals_insert on customers",
                "drop trigger customers_wallet_totals_update on customers",
                "drop trigger customers_wallet_totals_delete on customers",
                "drop index bonus_lots_org_expiry",
            ],
            Baseline::NoScaleIndexes => &[
                "drop index receipts_by_org, receipts_by_org_status, receipts_by_time, receipts_by_status,
                            outbox_by_org, outbox_by_org_status, outbox_by_status_id,
                            customers_name_trgm, customers_username_trgm, customers_phone_trgm",
                "create index receipts_by_status on receipts (status, updated_at desc)",
            ],
            Baseline::NoStatusCounts => &[
                "drop trigger receipts_status_insert on receipts",
                "drop trigger receipts_status_update on receipts",
                "drop trigger receipts_status_delete on receipts",
                "drop trigger outbox_status_insert on outbox",
                "drop trigger outbox_status_update on outbox",
                "drop trigger outbox_status_delete on outbox",
            ],
        }
    }
}

/// The worker on each empty database, `--worker-rounds` times in turn (so a change of the
/// machine's load falls on all of them); each one's median.
async fn measure_empty(
    args: &ScaleArgs,
    empty: &[Scratch],
) -> anyhow::Result<Vec<(Baseline, WorkerRate)>> {
    let mut envs = Vec::new();
    for (baseline, scratch) in Baseline::ALL.into_iter().zip(empty) {
        let env = Environment::serve_new(&args.servers.amqp_url, scratch).await?;
        for statement in baseline.undo() {
            sqlx::query(sqlx::AssertSqlSafe(*statement))
                .execute(&env.db)
                .await?;
        }
        envs.push((baseline, scratch, env));
    }
    let outcome = async {
        let mut rates: Vec<(Baseline, Vec<WorkerRate>)> =
            Baseline::ALL.iter().map(|b| (*b, Vec::new())).collect();
        for round in 1..=args.worker_rounds {
            for ((baseline, scratch, env), (_, rates)) in envs.iter().zip(&mut rates) {
                eprintln!(
                    "[4/4] worker, round {round}/{}, {}: {} receipts",
                    args.worker_rounds,
                    baseline.name(),
                    args.worker_receipts
                );
                let shop = env
                    .operator
                    .seed(500, args.worker_receipts, 16, None)
                    .await?;
                let bills: Vec<(i64, i64)> = shop.bills.iter().map(|b| (b.id, b.total)).collect();
                let rate = worker_phase(args, env, scratch, shop.org, &shop.token, &bills).await?;
                eprintln!("      {:.0} receipts/s", rate.steady);
                rates.push(rate);
            }
        }
        anyhow::Ok(
            rates
                .into_iter()
                .map(|(baseline, mut rates)| {
                    rates.sort_by(|a, b| a.steady.total_cmp(&b.steady));
                    (baseline, rates[rates.len() / 2])
                })
                .collect(),
        )
    }
    .await;
    for (_, _, env) in envs {
        env.stop().await;
    }
    outcome
}

/// The filled database's part: fill (unless reused), the reads, the worker.
async fn measure_filled(
    args: &ScaleArgs,
    env: &Environment,
    big: &Scratch,
) -> anyhow::Result<(Option<Fill>, Size, Vec<Read>, WorkerRate)> {
    let fill = if args.reuse.is_some() {
        None
    } else {
        Some(fill(args, env).await?)
    };
    let org: i64 =
        sqlx::query_scalar("select id from organizations where name = $1 order by id desc limit 1")
            .bind(ORG_NAME)
            .fetch_optional(&env.db)
            .await?
            .context("the database holds no organization filled by `loadgen scale`")?;
    if args.reuse.is_some() {
        // A database filled before the wallet totals existed has them from their migration.
        let mut conn = env.db.acquire().await?;
        check_totals(&mut conn, org).await?;
    }
    // What the workers do every second and none runs here: fold the status change log (after the
    // fill, the day's rows logged anew by the recount).
    let at = Instant::now();
    let folded = loyalty::status_counts::compact(&env.db).await?;
    eprintln!(
        "      status change log folded: {folded} rows in {:.1} s",
        at.elapsed().as_secs_f64()
    );
    let size = Size::of(&env.db, org).await?;
    eprintln!(
        "      {} customers, {} ledger entries, {} receipts, {} notifications",
        size.customers, size.entries, size.receipts, size.notifications
    );
    let token = env
        .operator
        .post(
            &format!("/orgs/{org}/integrations"),
            &json!({"system": "loadgen scale"}),
            201,
        )
        .await?["token"]
        .as_str()
        .context("POS token")?
        .to_owned();

    eprintln!("[2/4] reads: {} timed requests each", args.samples);
    let reads = Reads::new(env, org, &token, args.samples, args.skip_offset_reads);
    let reads = reads.all(&env.db).await?;

    eprintln!(
        "[3/4] worker on the filled database: {} receipts",
        args.worker_receipts
    );
    // New open bills for customers spread over the whole organization.
    let n = i64::try_from(args.worker_receipts)?;
    let customers = size.customers;
    let bills: Vec<(i64, i64)> = sqlx::query_as(
        "insert into bills (org_id, id, customer_id, number, items, total)
         select $1, m.top + g, 1 + (g * 7919) % $3, 'W-' || (m.top + g), '[]', 500 + (g % 100) * 50
         from generate_series(1, $2::bigint) g, (select coalesce(max(id), 0) as top from bills where org_id = $1) m
         returning id, total::bigint",
    )
    .bind(org)
    .bind(n)
    .bind(customers)
    .fetch_all(&env.db)
    .await?;
    let worker = worker_phase(args, env, big, org, &token, &bills).await?;
    eprintln!("      {:.0} receipts/s", worker.steady);
    let mut conn = env.db.acquire().await?;
    check_totals(&mut conn, org).await?;
    Ok((fill, size, reads, worker))
}

/// Figures of the fill.
#[derive(Debug, Clone, Copy)]
struct Fill {
    seconds: f64,
    /// Of which the set-based wallet and lot update, the check and `vacuum analyze`.
    derive_seconds: f64,
}

/// Row counts of the organization as measured.
#[derive(Debug, Clone, Copy)]
struct Size {
    customers: i64,
    entries: i64,
    receipts: i64,
    notifications: i64,
    bills: i64,
}

impl Size {
    async fn of(db: &PgPool, org: i64) -> anyhow::Result<Self> {
        let (customers, entries, receipts, notifications, bills): (i64, i64, i64, i64, i64) =
            sqlx::query_as(
                "select (select count(*) from customers where org_id = $1),
                        (select count(*) from ledger_entries where org_id = $1),
                        (select count(*) from receipts where org_id = $1),
                        (select count(*) from outbox where org_id = $1),
                        (select count(*) from bills where org_id = $1)",
            )
            .bind(org)
            .fetch_one(db)
            .await?;
        Ok(Self {
            customers,
            entries,
            receipts,
            notifications,
            bills,
        })
    }
}

/// splitmix64: a well-spread pseudo-random value per row, the same on every run.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const FIRST_NAMES: [&str; 16] = [
    "Айгерим",
    "Алексей",
    "Асель",
    "Данияр",
    "Елена",
    "Ержан",
    "Ирина",
    "Марат",
    "Мария",
    "Нурлан",
    "Ольга",
    "Руслан",
    "Сауле",
    "Тимур",
    "Анна",
    "Дмитрий",
];
const LAST_NAMES: [&str; 16] = [
    "Ахметов",
    "Иванова",
    "Жумабаев",
    "Ким",
    "Смирнов",
    "Нурланова",
    "Петров",
    "Сулейменов",
    "Ли",
    "Кузнецова",
    "Омаров",
    "Попова",
    "Исаев",
    "Бекова",
    "Ершов",
    "Абдрахманов",
];

/// Customer `c` (1-based): the name, phone and Telegram id the fill gives them.
struct Person {
    first: &'static str,
    last: &'static str,
    phone: String,
    telegram: Option<i64>,
}

fn person(c: usize) -> Person {
    let h = mix(c as u64);
    let c64 = c as u64;
    // 3^18 is prime to 10^9, so every customer's nine digits differ.
    let digits = c64.wrapping_mul(387_420_489) % 1_000_000_000;
    Person {
        first: FIRST_NAMES[(h % 16) as usize],
        last: LAST_NAMES[((h >> 8) % 16) as usize],
        phone: format!("+77{digits:09}"),
        // The regulars and 60 % of the others opened the Mini App.
        telegram: (c <= REGULARS || h % 10 < 6).then(|| TELEGRAM_IDS + c as i64),
    }
}

/// The receipt of customer `c`: its status (94 % processed, then duplicate, unmatched, ignored,
/// dead) and total.
fn receipt_status(c: usize) -> &'static str {
    match mix(c as u64 ^ 0xdead) % 100 {
        0..=93 => "processed",
        94 | 95 => "duplicate",
        96 | 97 => "unmatched",
        98 => "ignored",
        _ => "dead",
    }
}

fn receipt_total(c: usize) -> u64 {
    500 + (mix(c as u64 ^ 0x7071) % 200) * 50
}

/// `COPY` text of a timestamp.
fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

async fn fill(args: &ScaleArgs, env: &Environment) -> anyhow::Result<Fill> {
    let n = args.customers;
    eprintln!(
        "[1/4] fill: {n} customers, {} ledger entries, {n} receipts, bills, invoices, notifications",
        n * args.entries + REGULARS * (REGULAR_ENTRIES - args.entries)
    );
    let started = Instant::now();
    let org = env
        .operator
        .post(
            "/orgs",
            &json!({
                "name": ORG_NAME,
                "telegram_bot_token": BOT_TOKEN,
                "bonus_program_settings": {
                    "invoice_bonus_percentage": 2,
                    "referral_promo_bonus": 50,
                    "referrer_first_purchase_percentage": 5
                }
            }),
            201,
        )
        .await?["id"]
        .as_i64()
        .context("org id")?;
    let mut conn = PgConnection::connect(&env.db_url).await?;
    // Skips the triggers, the foreign keys' included, for this session only (superuser).
    sqlx::query("set session_replication_role = replica")
        .execute(&mut conn)
        .await
        .context("set session_replication_role = replica (needs a superuser)")?;
    let now = Utc::now();
    let year_ago = now - TimeDelta::days(365);
    let created =
        |c: usize| year_ago - TimeDelta::days(30) + TimeDelta::seconds((c % 86_400) as i64);
    let timed = |what: &str, since: Instant| {
        eprintln!("      {what}: {:.1} s", since.elapsed().as_secs_f64());
    };

    let at = Instant::now();
    copy_lines(
        &mut conn,
        "copy customers (org_id, id, telegram_id, first_name, last_name, username, phone_number,
                         visited_at, visited_at_str, has_been_welcomed, has_made_first_purchase,
                         spent_total, created_at) from stdin",
        n,
        |i| {
            let c = i + 1;
            let p = person(c);
            let processed = receipt_status(c) == "processed";
            let spent = if processed { receipt_total(c) } else { 0 };
            let (tg, user, visited, visited_str) = match p.telegram {
                Some(tg) => {
                    let v = now - TimeDelta::seconds((mix(c as u64) % 2_592_000) as i64);
                    let local = (v + TimeDelta::hours(5)).format("%Y-%m-%d %H:%M:%S");
                    (tg.to_string(), format!("user{c}"), ts(v), local.to_string())
                }
                None => ("\\N".into(), "\\N".into(), "\\N".into(), "\\N".into()),
            };
            format!(
                "{org}\t{c}\t{tg}\t{}\t{}\t{user}\t{}\t{visited}\t{visited_str}\tt\t{}\t{spent}\t{}\n",
                p.first,
                p.last,
                p.phone,
                if processed { "t" } else { "f" },
                ts(created(c))
            )
        },
    )
    .await
    .context("copy customers")?;
    timed("customers", at);

    // Entry k of customer c: accruals from purchases on the main wallet, every fifth a payment
    // with bonuses of half the accrual before it (so no wallet goes below zero); every tenth
    // customer was referred and has a referral bonus first.
    let entries_of = |c: usize| {
        if c <= REGULARS {
            REGULAR_ENTRIES
        } else {
            args.entries
        }
    };
    let offsets: Vec<usize> = (1..=n)
        .scan(0, |acc, c| {
            let start = *acc;
            *acc += entries_of(c);
            Some(start)
        })
        .collect();
    let total_entries = offsets.last().map_or(0, |o| o + entries_of(n));
    let at = Instant::now();
    copy_lines(
        &mut conn,
        "copy ledger_entries (org_id, customer_id, wallet, kind, amount, description, source, source_ref,
                              transaction_type, occurred_at, utc_offset_seconds) from stdin",
        total_entries,
        |i| {
            let c = offsets.partition_point(|&o| o <= i);
            let k = i - offsets[c - 1];
            let e = entries_of(c);
            let occurred = created(c)
                + TimeDelta::seconds(((k as i64 + 1) * 31_536_000) / e as i64)
                + TimeDelta::seconds((mix(i as u64) % 3600) as i64);
            let accrual = |k: usize| 10 + mix((c as u64) << 12 | k as u64) % 190;
            let (wallet, kind, amount, description, source, ttype) = if k == 0 && c % 10 == 0 {
                ("referral", "accrual", 50, "Бонус по промокоду", "promo", "referral")
            } else if k % 5 == 4 {
                (
                    "main",
                    "deduction",
                    accrual(k - 1) / 2,
                    "Оплата бонусами",
                    "receipt",
                    "bonus",
                )
            } else {
                (
                    "main",
                    "accrual",
                    accrual(k),
                    "Начисление за покупку",
                    "receipt",
                    "bonus",
                )
            };
            // A halved odd accrual is still a whole number here (integer division); amounts
            // carry no trailing zeros, as the `exact_ledger_amount` trigger would leave them.
            let amount = amount.max(1);
            format!(
                "{org}\t{c}\t{wallet}\t{kind}\t{amount}\t{description}\t{source}\tfill-{c}-{k}\t{ttype}\t{}\t18000\n",
                ts(occurred)
            )
        },
    )
    .await
    .context("copy ledger entries")?;
    timed("ledger entries", at);

    // Bills 1..=n: customer c's receipt paid bill c (processed ones); the newest 1 % are open.
    let open = (n / 100).max(10);
    let items = |total: u64| {
        format!(
            r#"[{{"name": "Товар", "quantity": 1, "unit_price": {total}, "item_total": {total}, "unit": "Штука", "tax_rate": null, "product_id": 521}}]"#
        )
    };
    let sold_within: u64 = if args.busy_day { 86_400 } else { 31_536_000 };
    let sold = |c: usize| now - TimeDelta::seconds((mix(c as u64 ^ 0x5a1e) % sold_within) as i64);
    let at = Instant::now();
    copy_lines(
        &mut conn,
        "copy bills (org_id, id, customer_id, number, status, items, total, created_at, closed_at,
                     paid_by_receipt) from stdin",
        n + open,
        |i| {
            let id = i + 1;
            if id > n {
                let c = 1 + (mix(id as u64) % n as u64) as usize;
                let total = receipt_total(c);
                let made = now - TimeDelta::seconds((id - n) as i64 * 60);
                return format!(
                    "{org}\t{id}\t{c}\tSC-{id}\topen\t{}\t{total}\t{}\t\\N\t\\N\n",
                    items(total),
                    ts(made)
                );
            }
            let c = id;
            let total = receipt_total(c);
            let made = sold(c) - TimeDelta::minutes(5);
            let (status, closed, paid_by) = match receipt_status(c) {
                "processed" => ("paid", ts(sold(c)), format!("rc-{c}")),
                _ => ("cancelled", ts(sold(c)), "\\N".to_owned()),
            };
            format!(
                "{org}\t{id}\t{c}\tSC-{id}\t{status}\t{}\t{total}\t{}\t{closed}\t{paid_by}\n",
                items(total),
                ts(made)
            )
        },
    )
    .await
    .context("copy bills")?;
    timed("bills", at);

    let at = Instant::now();
    copy_lines(
        &mut conn,
        "copy receipts (org_id, event_id, receipt_id, event_type, receipt_type, status, reason, duplicate_of,
                        bill_id, customer_id, invoice_id, total_amount, attempts, last_error, payload,
                        received_at, sold_at, processed_at, updated_at) from stdin",
        n,
        |i| {
            let c = i + 1;
            let total = receipt_total(c);
            let status = receipt_status(c);
            let at = sold(c);
            let received = ts(at + TimeDelta::seconds(1));
            let applied = ts(at + TimeDelta::seconds(2));
            let payload = format!(
                r#"{{"id": "ev-{c}", "type": "ReceiptCreated", "data": {{"id": "rc-{c}", "type": "SELL", "totalAmount": {total}, "extras": {{"billId": "{c}"}}}}}}"#
            );
            let n = "\\N";
            let (reason, dup, bill, customer, invoice, amount, attempts, error, processed): (
                String,
                String,
                String,
                String,
                String,
                String,
                i32,
                String,
                String,
            ) = match status {
                    "processed" => (
                        n.into(),
                        n.into(),
                        c.to_string(),
                        c.to_string(),
                        format!("inv-{c}"),
                        total.to_string(),
                        1,
                        n.into(),
                        applied.clone(),
                    ),
                    "duplicate" => (
                        "the receipt was applied before".into(),
                        format!("ev-{}", c.max(2) - 1),
                        n.into(),
                        n.into(),
                        n.into(),
                        total.to_string(),
                        1,
                        n.into(),
                        applied.clone(),
                    ),
                    "unmatched" | "ignored" => (
                        "no open bill with this id".into(),
                        n.into(),
                        n.into(),
                        n.into(),
                        n.into(),
                        total.to_string(),
                        1,
                        n.into(),
                        applied.clone(),
                    ),
                    _ => (
                        n.into(),
                        n.into(),
                        n.into(),
                        n.into(),
                        n.into(),
                        total.to_string(),
                        10,
                        "database: deadlock detected".to_owned(),
                        n.into(),
                    ),
                };
            let receipt_id = if status == "duplicate" {
                format!("rc-{}", c.max(2) - 1)
            } else {
                format!("rc-{c}")
            };
            format!(
                "{org}\tev-{c}\t{receipt_id}\tReceiptCreated\tSELL\t{status}\t{reason}\t{dup}\t{bill}\t{customer}\t{invoice}\t{amount}\t{attempts}\t{error}\t{payload}\t{received}\t{}\t{processed}\t{applied}\n",
                ts(at)
            )
        },
    )
    .await
    .context("copy receipts")?;
    timed("receipts", at);

    let at = Instant::now();
    let processed: Vec<usize> = (1..=n)
        .filter(|&c| receipt_status(c) == "processed")
        .collect();
    copy_lines(
        &mut conn,
        "copy invoices (org_id, invoice_id, customer_id, occurred_at, utc_offset_seconds, total_amount, items,
                        bonuses_deducted, receipt_id) from stdin",
        processed.len(),
        |i| {
            let c = processed[i];
            let total = receipt_total(c);
            format!(
                "{org}\tinv-{c}\t{c}\t{}\t18000\t{total}\t{}\t0\trc-{c}\n",
                ts(sold(c)),
                items(total)
            )
        },
    )
    .await
    .context("copy invoices")?;
    // One purchase notification per applied receipt: sent to those with Telegram (a few blocked
    // the bot or failed for good), skipped for the others.
    copy_lines(
        &mut conn,
        "copy outbox (org_id, customer_id, kind, payload, trace_id, created_at, published_at, status, attempts,
                      last_error, telegram_message_id, sent_at, updated_at) from stdin",
        processed.len(),
        |i| {
            let c = processed[i];
            let made = sold(c) + TimeDelta::seconds(2);
            let done = ts(made + TimeDelta::seconds(1));
            let amount = receipt_total(c) * 2 / 100;
            let payload = format!(r#"{{"amount": "{amount}", "invoice_id": "inv-{c}"}}"#);
            let h = mix(c as u64 ^ 0x0b0c) % 100;
            let (status, attempts, error, message, sent) = match person(c).telegram {
                None => ("skipped", 0, "\\N".to_owned(), "\\N".to_owned(), "\\N".to_owned()),
                Some(_) if h < 2 => (
                    "unreachable",
                    1,
                    "Forbidden: bot was blocked by the user".to_owned(),
                    "\\N".to_owned(),
                    "\\N".to_owned(),
                ),
                Some(_) if h < 3 => (
                    "dead",
                    8,
                    "Too Many Requests".to_owned(),
                    "\\N".to_owned(),
                    "\\N".to_owned(),
                ),
                Some(_) => ("sent", 1, "\\N".to_owned(), (c * 3).to_string(), done.clone()),
            };
            format!(
                "{org}\t{c}\tpurchase_accrual\t{payload}\tev-{c}\t{}\t{done}\t{status}\t{attempts}\t{error}\t{message}\t{sent}\t{done}\n",
                ts(made)
            )
        },
    )
    .await
    .context("copy notifications")?;
    timed("invoices and notifications", at);

    let derive = Instant::now();
    derive_and_check(&mut conn, org, n).await?;
    conn.close().await?;
    sqlx::query("vacuum analyze").execute(&env.db).await?;
    timed("wallets, lots, check, vacuum analyze", derive);
    let fill = Fill {
        seconds: started.elapsed().as_secs_f64(),
        derive_seconds: derive.elapsed().as_secs_f64(),
    };
    eprintln!("      filled in {:.1} s", fill.seconds);
    Ok(fill)
}

/// Sets what the skipped triggers would have set, then proves it: every wallet is the sum of its
/// entries, every bonus wallet the sum of its lots, every row's customer exists, the organization's
/// wallet totals are the sum of its wallets. Called with the triggers still off (`replica`): the
/// wallets are set without the totals' triggers, and the totals are then set from them in one
/// statement.
async fn derive_and_check(conn: &mut PgConnection, org: i64, n: usize) -> anyhow::Result<()> {
    let delta = "case when kind = 'accrual' then amount else -amount end";
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "update customers c set bonuses = s.main, referral_bonuses = s.referral
         from (select customer_id,
                      coalesce(sum({delta}) filter (where wallet = 'main'), 0) as main,
                      coalesce(sum({delta}) filter (where wallet = 'referral'), 0) as referral
               from ledger_entries where org_id = $1 group by customer_id) s
         where c.org_id = $1 and c.id = s.customer_id"
    )))
    .bind(org)
    .execute(&mut *conn)
    .await
    .context("wallets from entries")?;
    sqlx::query("delete from org_wallet_totals where org_id = $1")
        .bind(org)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "insert into org_wallet_totals
             (org_id, shard, bonuses, referral_bonuses, debts, pending_bonuses, pending_referral_bonuses)
         select $1, 0, coalesce(sum(bonuses), 0), coalesce(sum(referral_bonuses), 0),
                coalesce(sum(debts), 0), coalesce(sum(pending_bonuses), 0),
                coalesce(sum(pending_referral_bonuses), 0)
         from customers where org_id = $1",
    )
    .bind(org)
    .execute(&mut *conn)
    .await
    .context("wallet totals from wallets")?;
    sqlx::query("set session_replication_role = origin")
        .execute(&mut *conn)
        .await?;
    // The status change log's triggers were off too: the day's counts from the rows.
    sqlx::query("select recount_status_counts()")
        .execute(&mut *conn)
        .await
        .context("status counts from the rows")?;
    // As the rules wave's migration turned balances into lots: one opening lot per wallet.
    sqlx::query(
        "insert into bonus_lots (org_id, customer_id, wallet, amount, remaining, pending, activates_at, source)
         select org_id, id, 'main', bonuses, bonuses, false, created_at, 'opening'
         from customers where org_id = $1 and bonuses > 0
         union all
         select org_id, id, 'referral', referral_bonuses, referral_bonuses, false, created_at, 'opening'
         from customers where org_id = $1 and referral_bonuses > 0",
    )
    .bind(org)
    .execute(&mut *conn)
    .await
    .context("lots from wallets")?;
    // New customers (Mini App first visits) take ids past the filled ones.
    sqlx::query(
        "select setval('customer_ids', greatest($1, (select last_value from customer_ids)))",
    )
    .bind(i64::try_from(n)? + 1)
    .execute(&mut *conn)
    .await?;

    let (entries_off, lots_off, orphans): (i64, i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "with e as (select customer_id,
                           coalesce(sum({delta}) filter (where wallet = 'main'), 0) as main,
                           coalesce(sum({delta}) filter (where wallet = 'referral'), 0) as referral,
                           coalesce(sum({delta}) filter (where wallet not in ('main', 'referral')), 0) as other
                    from ledger_entries where org_id = $1 group by customer_id),
              l as (select customer_id,
                           coalesce(sum(remaining) filter (where wallet = 'main'), 0) as main,
                           coalesce(sum(remaining) filter (where wallet = 'referral'), 0) as referral
                    from bonus_lots where org_id = $1 group by customer_id)
         select count(*) filter (where c.bonuses <> coalesce(e.main, 0)
                                    or c.referral_bonuses <> coalesce(e.referral, 0)
                                    or c.debts + c.pending_bonuses + c.pending_referral_bonuses <> coalesce(e.other, 0)),
                count(*) filter (where c.bonuses <> coalesce(l.main, 0) or c.referral_bonuses <> coalesce(l.referral, 0)),
                (select count(*) from ledger_entries x where x.org_id = $1
                   and not exists (select 1 from customers y where y.org_id = $1 and y.id = x.customer_id))
         from customers c left join e on e.customer_id = c.id left join l on l.customer_id = c.id
         where c.org_id = $1"
    )))
    .bind(org)
    .fetch_one(&mut *conn)
    .await
    .context("check the invariants")?;
    if entries_off + lots_off + orphans != 0 {
        bail!(
            "the fill broke the invariants: {entries_off} wallets differ from their entries, \
             {lots_off} from their lots, {orphans} entries have no customer"
        );
    }
    check_totals(&mut *conn, org).await?;
    eprintln!(
        "      checked: wallets = entries, lots = wallets, no orphan entry, totals = wallets"
    );
    Ok(())
}

/// Fails unless the organization's wallet totals (`org_wallet_totals`) are the sum of its
/// customers' wallets.
async fn check_totals(conn: &mut PgConnection, org: i64) -> anyhow::Result<()> {
    let sums = "coalesce(sum(bonuses), 0) as b, coalesce(sum(referral_bonuses), 0) as r,
                coalesce(sum(debts), 0) as d, coalesce(sum(pending_bonuses), 0) as p,
                coalesce(sum(pending_referral_bonuses), 0) as rp";
    let (equal, kept, summed): (bool, String, String) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "with k as (select {sums} from org_wallet_totals where org_id = $1),
              s as (select {sums} from customers where org_id = $1)
         select (k.b, k.r, k.d, k.p, k.rp) = (s.b, s.r, s.d, s.p, s.rp), k::text, s::text
         from k, s"
        )))
        .bind(org)
        .fetch_one(&mut *conn)
        .await
        .context("check the wallet totals")?;
    if !equal {
        bail!("the wallet totals {kept} are not the sum of the wallets {summed}");
    }
    Ok(())
}

/// One read as timed.
#[derive(Debug, Clone)]
struct Read {
    name: String,
    who: String,
    samples: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// The requests of the reads, against the filled organization.
struct Reads<'a> {
    http: reqwest::Client,
    base: &'a str,
    admin: &'a str,
    pos: &'a str,
    org: i64,
    samples: usize,
    skip_offsets: bool,
}

impl<'a> Reads<'a> {
    fn new(
        env: &'a Environment,
        org: i64,
        pos: &'a str,
        samples: usize,
        skip_offsets: bool,
    ) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: &env.base,
            admin: env.operator.token(),
            pos,
            org,
            samples,
            skip_offsets,
        }
    }

    /// GETs `path` with `auth` (the whole `Authorization` value); its JSON, or an error unless 200.
    async fn get(&self, path: &str, auth: &str) -> anyhow::Result<(Value, f64)> {
        let at = Instant::now();
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header(reqwest::header::AUTHORIZATION, auth)
            .send()
            .await?;
        let status = response.status();
        let body = response.bytes().await?;
        let ms = at.elapsed().as_secs_f64() * 1000.0;
        if status != reqwest::StatusCode::OK {
            bail!(
                "GET {path} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok((serde_json::from_slice(&body)?, ms))
    }

    /// Times `samples` GETs of the paths `path(i)` makes, as `auth`, after one untimed request
    /// (the statement is prepared, the pages are in the cache), and records the read.
    async fn time_read(
        &self,
        reads: &mut Vec<Read>,
        name: &str,
        auth: &str,
        path: impl Fn(usize) -> String,
    ) -> anyhow::Result<()> {
        self.get(&path(self.samples), auth).await?;
        let mut times = Vec::with_capacity(self.samples);
        for i in 0..self.samples {
            times.push(self.get(&path(i), auth).await?.1);
        }
        record(reads, summarize(name, times));
        Ok(())
    }

    /// The baseline of the summary's counts: the query the summary ran before the counts were kept
    /// (`20261205000001_status_counts.sql`), the organization's receipts and notifications by status
    /// over the day from the rows' (org, status, updated_at) index, both tables one after the other
    /// as one sample, straight on the database.
    async fn time_counted_from_rows(
        &self,
        reads: &mut Vec<Read>,
        db: &PgPool,
    ) -> anyhow::Result<()> {
        macro_rules! from_rows {
            ($table:literal) => {
                concat!(
                    "select s.status,
                            count(t.updated_at) filter (where t.updated_at > now() - interval '1 minute'),
                            count(t.updated_at) filter (where t.updated_at > now() - interval '1 hour'),
                            count(t.updated_at)
                     from unnest($1::text[]) with ordinality as s(status, position)
                     left join ", $table, " t on t.status = s.status
                          and t.updated_at > now() - interval '1 day' and t.org_id = $2
                     group by s.status, s.position order by s.position"
                )
            };
        }
        const FROM_ROWS: [&str; 2] = [from_rows!("receipts"), from_rows!("outbox")];
        let statuses = [
            &loyalty::receipts::ReceiptStatus::NAMES[..],
            &loyalty::notifications::STATUSES[..],
        ];
        let mut times = Vec::with_capacity(self.samples);
        for i in 0..=self.samples {
            let at = Instant::now();
            for (sql, statuses) in FROM_ROWS.into_iter().zip(statuses) {
                sqlx::query(sql)
                    .bind(statuses)
                    .bind(self.org)
                    .fetch_all(db)
                    .await?;
            }
            // The first one prepares the statements and warms the cache, as in `time_read`.
            if i > 0 {
                times.push(at.elapsed().as_secs_f64() * 1000.0);
            }
        }
        record(
            reads,
            summarize(
                "operator: summary counts from the rows (before, SQL only)",
                times,
            ),
        );
        Ok(())
    }

    async fn all(&self, db: &PgPool) -> anyhow::Result<Vec<Read>> {
        let org = self.org;
        let admin = format!("Bearer {}", self.admin);
        let pos = format!("Bearer {}", self.pos);
        let customers: i64 = sqlx::query_scalar("select count(*) from customers where org_id = $1")
            .bind(org)
            .fetch_one(db)
            .await?;
        let customers = u64::try_from(customers)?;
        let pick = |i: usize| 1 + mix(i as u64 ^ 0x5eed) % customers;
        let open: Vec<i64> = sqlx::query_scalar(
            "select id from bills where org_id = $1 and status = 'open' order by id limit 1000",
        )
        .bind(org)
        .fetch_all(db)
        .await?;
        if open.is_empty() {
            bail!("the organization has no open bill");
        }
        let mut reads = Vec::new();
        let r = &mut reads;
        let admin_path = |p: &str| format!("/admin/v1/orgs/{org}{p}");

        self.time_read(r, "POS: open bills (/api/v2/list)", &pos, |_| {
            "/api/v2/list".into()
        })
        .await?;
        self.time_read(r, "POS: bill by id (/api/v2/bill/byid)", &pos, |i| {
            format!("/api/v2/bill/byid/{}", open[i % open.len()])
        })
        .await?;
        self.time_read(r, "operator: customer by id", &admin, |i| {
            admin_path(&format!("/customers/{}", pick(i)))
        })
        .await?;
        self.time_read(
            r,
            "operator: customer search by phone (7 digits)",
            &admin,
            |i| {
                let phone = person(pick(i) as usize).phone;
                admin_path(&format!("/customers?q={}", &phone[phone.len() - 7..]))
            },
        )
        .await?;
        self.time_read(r, "operator: customer search by last name", &admin, |i| {
            let name = LAST_NAMES[i % LAST_NAMES.len()];
            admin_path(&format!("/customers?q={}", url_encode(name)))
        })
        .await?;
        self.time_read(r, "operator: customers, first page", &admin, |_| {
            admin_path("/customers")
        })
        .await?;
        let deep = customers * 9 / 10;
        self.deep_pages(r, &admin, "customers", deep).await?;

        for (list, statuses) in [
            ("receipts", &loyalty::receipts::ReceiptStatus::NAMES[..]),
            ("notifications", &loyalty::notifications::STATUSES[..]),
        ] {
            for status in std::iter::once(None).chain(statuses.iter().map(Some)) {
                let filter = status.map_or(String::new(), |s| format!("?status={s}"));
                let label = status.map_or("all".to_owned(), |s| format!("status={s}"));
                self.time_read(r, &format!("operator: {list}, {label}"), &admin, |_| {
                    admin_path(&format!("/{list}{filter}"))
                })
                .await?;
            }
            self.deep_pages(r, &admin, list, 100_000.min(customers / 2))
                .await?;
        }
        self.time_read(r, "operator: /admin/v1/ops/summary", &admin, |_| {
            format!("/admin/v1/ops/summary?org={org}")
        })
        .await?;
        self.time_read(
            r,
            "operator: /admin/v1/ops/summary, all organizations",
            &admin,
            |_| "/admin/v1/ops/summary".to_owned(),
        )
        .await?;
        self.time_counted_from_rows(r, db).await?;
        self.time_read(r, "operator: liability report", &admin, |_| {
            admin_path("/reports/liability")
        })
        .await?;
        self.miniapp(r).await?;
        Ok(reads)
    }

    /// A list `deep` rows in: by offset, then by the cursor the offset's page gives (if any).
    async fn deep_pages(
        &self,
        reads: &mut Vec<Read>,
        admin: &str,
        list: &str,
        deep: u64,
    ) -> anyhow::Result<()> {
        let path = |p: &str| format!("/admin/v1/orgs/{}/{list}{p}", self.org);
        let by_offset = path(&format!("?offset={deep}"));
        if !self.skip_offsets {
            self.time_read(
                reads,
                &format!("operator: {list}, offset {deep}"),
                admin,
                |_| by_offset.clone(),
            )
            .await?;
        }
        let (page, _) = self.get(&by_offset, admin).await?;
        if let Some(cursor) = page["next_cursor"].as_str() {
            let after = path(&format!("?after={cursor}"));
            self.time_read(
                reads,
                &format!("operator: {list}, after row {deep} (cursor)"),
                admin,
                |_| after.clone(),
            )
            .await?;
        }
        Ok(())
    }

    /// The Mini App: the profile, and the regulars' histories walked to the end by `next_before`.
    async fn miniapp(&self, reads: &mut Vec<Read>) -> anyhow::Result<()> {
        let org = self.org;
        let auth = |c: usize| {
            let user = json!({"id": TELEGRAM_IDS + c as i64, "first_name": person(c).first});
            let now = Utc::now().timestamp().to_string();
            format!(
                "tma {}",
                loyalty::init_data::sign(
                    &[("auth_date", &now), ("user", &user.to_string())],
                    BOT_TOKEN
                )
            )
        };
        // Customer 1 is a regular: 1000 entries.
        self.time_read(
            reads,
            "customer: Mini App profile (/me), 1000 entries",
            &auth(1),
            |_| format!("/app/v1/orgs/{org}/me"),
        )
        .await?;
        let (mut first, mut deep) = (Vec::new(), Vec::new());
        let mut c = 0;
        while first.len() < self.samples.min(REGULARS) || deep.len() < self.samples {
            c = c % REGULARS + 1;
            let auth = auth(c);
            let mut before: Option<String> = None;
            for page in 0.. {
                let path = match &before {
                    None => format!("/app/v1/orgs/{org}/me/history?limit=20"),
                    Some(b) => format!("/app/v1/orgs/{org}/me/history?limit=20&before={b}"),
                };
                let (body, ms) = self.get(&path, &auth).await?;
                if page == 0 {
                    first.push(ms);
                } else {
                    deep.push(ms);
                }
                match body["next_before"].as_str() {
                    Some(next) => before = Some(next.to_owned()),
                    None => break,
                }
            }
        }
        record(
            reads,
            summarize("customer: Mini App history, first page", first),
        );
        record(
            reads,
            summarize(
                &format!(
                    "customer: Mini App history, pages 2-{} (next_before)",
                    REGULAR_ENTRIES / 20
                ),
                deep,
            ),
        );
        Ok(())
    }
}

fn url_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A read from its times; who makes it is the name's part before the colon.
fn summarize(name: &str, mut times: Vec<f64>) -> Read {
    times.sort_by(f64::total_cmp);
    Read {
        name: name.to_owned(),
        who: name.split_once(':').map_or("", |(who, _)| who).to_owned(),
        samples: times.len(),
        p50_ms: http::percentile(&times, 0.50),
        p99_ms: http::percentile(&times, 0.99),
        max_ms: times.last().copied().unwrap_or(0.0),
    }
}

/// Prints a read as it is measured and keeps it for the report.
fn record(reads: &mut Vec<Read>, read: Read) {
    eprintln!(
        "      {:<58} p50 {:>7.1} ms  p99 {:>7.1} ms",
        read.name, read.p50_ms, read.p99_ms
    );
    reads.push(read);
}

/// The worker's rate on one database.
#[derive(Debug, Clone, Copy)]
struct WorkerRate {
    receipts: usize,
    /// From the worker's start to the last receipt processed.
    overall: f64,
    /// Between the first and the last `processed_at` (without the start).
    steady: f64,
}

/// Queues one receipt per bill through ingest (no worker running), then times the real worker
/// applying them.
async fn worker_phase(
    args: &ScaleArgs,
    env: &Environment,
    scratch: &Scratch,
    org: i64,
    token: &str,
    bills: &[(i64, i64)],
) -> anyhow::Result<WorkerRate> {
    let bills: Vec<crate::setup::Bill> = bills
        .iter()
        .map(|&(id, total)| crate::setup::Bill { id, total })
        .collect();
    let client = http::Client::new(&env.base, token, 32)?;
    client.warm_up().await?;
    // Event ids of this run only: a database kept from an earlier run holds that run's receipts.
    let phase = format!("scale{}", scratch.tag);
    let like = format!("{phase}-%");
    client.post_all(http::bodies(&phase, &bills)?, 32).await?;
    crate::checkpoint(&env.db).await;
    let broker = Arc::new(Broker::new(
        args.servers.amqp_url.clone(),
        Topology::new(scratch.prefix.clone()),
    ));
    let pool =
        loyalty::db::connect(&env.db_url, u32::from(args.worker_concurrency) * 2 + 2).await?;
    let running = worker::Running::start(pool, broker, args.worker_concurrency, args.worker_batch);
    let ids: Vec<i64> = bills.iter().map(|b| b.id).collect();
    let done = wait_applied(args, env, scratch, org, &ids, running.started).await;
    let stopped = running.stop(Duration::from_secs(30)).await;
    let done = done?;
    stopped?;
    let steady = worker::steady_rate(&env.db, org, &like)
        .await?
        .unwrap_or_else(|| done.per_second());
    Ok(WorkerRate {
        receipts: bills.len(),
        overall: done.per_second(),
        steady,
    })
}

/// Waits until the phase's bills are paid (their receipts applied), counted from `since`. While
/// the worker works only the queue is watched: a count over the organization's receipts every
/// 100 ms (`worker::wait_processed`, by event id pattern) reads 10^6 rows each time on the filled
/// database and took a share of the database the worker is measured on.
async fn wait_applied(
    args: &ScaleArgs,
    env: &Environment,
    scratch: &Scratch,
    org: i64,
    bills: &[i64],
    since: Instant,
) -> anyhow::Result<http::Throughput> {
    let queue = scratch.topology.main(loyalty::queue::Stream::Receipts);
    let expected = i64::try_from(bills.len())?;
    let mut give_up = Instant::now() + Duration::from_secs(600);
    let mut queued = u32::MAX;
    loop {
        if Instant::now() > give_up {
            bail!(
                "the worker did not apply the {expected} receipts (bills {org}/…{:?} not all paid)",
                bills.last()
            );
        }
        if queued > 0 {
            queued = crate::broker::depth(&args.servers.amqp_url, &queue).await?;
            if queued == 0 {
                // What is in flight is applied within seconds, or never.
                give_up = Instant::now() + Duration::from_secs(120);
            }
        } else {
            let paid: i64 = sqlx::query_scalar(
                "select count(*) from bills where org_id = $1 and id = any($2) and status = 'paid'",
            )
            .bind(org)
            .bind(bills)
            .fetch_one(&env.db)
            .await?;
            if paid >= expected {
                return Ok(http::Throughput {
                    count: bills.len(),
                    elapsed: since.elapsed(),
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Report {
    customers: usize,
    fill: Option<Fill>,
    size: Size,
    reads: Vec<Read>,
    filled_worker: WorkerRate,
    /// Each empty database's median rate, [`Baseline::AsMigrated`] first.
    baselines: Vec<(Baseline, WorkerRate)>,
    /// The 1-minute load average when the run started and when it ended.
    load: (Option<f64>, Option<f64>),
}

/// The 1-minute load average (Linux), to say how busy the machine was.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Report {
    fn rate(&self, baseline: Baseline) -> f64 {
        self.baselines
            .iter()
            .find(|(b, _)| *b == baseline)
            .map_or(0.0, |(_, rate)| rate.steady)
    }

    /// `rate` against `baseline`'s rate.
    fn ratio(&self, rate: f64, baseline: Baseline) -> f64 {
        rate / self.rate(baseline).max(f64::EPSILON)
    }

    fn worker_ratio(&self) -> f64 {
        self.ratio(self.filled_worker.steady, Baseline::AsMigrated)
    }

    fn print(&self) {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nloadgen scale: {} customers, {} ledger entries, {} receipts, {} notifications, {} bills",
            self.size.customers,
            self.size.entries,
            self.size.receipts,
            self.size.notifications,
            self.size.bills
        );
        let load = |l: Option<f64>| l.map_or("?".to_owned(), |l| format!("{l:.1}"));
        let _ = writeln!(
            out,
            "load average (1 min): {} at the start, {} at the end",
            load(self.load.0),
            load(self.load.1)
        );
        if let Some(fill) = self.fill {
            let _ = writeln!(
                out,
                "fill: {:.0} s (of which wallets, lots, check and vacuum {:.0} s)",
                fill.seconds, fill.derive_seconds
            );
        }
        let _ = writeln!(
            out,
            "\n{:<64} {:>9} {:>9} {:>9}  target p99 < {READ_P99_TARGET_MS} ms",
            "read", "p50 ms", "p99 ms", "max ms"
        );
        for r in &self.reads {
            let _ = writeln!(
                out,
                "{:<64} {:>9.1} {:>9.1} {:>9.1}  {}",
                r.name,
                r.p50_ms,
                r.p99_ms,
                r.max_ms,
                if r.p99_ms < READ_P99_TARGET_MS {
                    "ok"
                } else {
                    "MISSED"
                }
            );
        }
        let filled = self.filled_worker;
        let _ = writeln!(
            out,
            "\nworker ({} receipts a run; steady rate, overall in brackets):",
            filled.receipts
        );
        let _ = writeln!(
            out,
            "  filled database: {:.0}/s ({:.0}); against the empty one {:.2}, target >= {:.2}: {}",
            filled.steady,
            filled.overall,
            self.worker_ratio(),
            1.0 - WORKER_TOLERANCE,
            if self.worker_ratio() >= 1.0 - WORKER_TOLERANCE {
                "ok"
            } else {
                "MISSED"
            }
        );
        for (baseline, rate) in &self.baselines {
            let _ = writeln!(
                out,
                "  {}: {:.0}/s ({:.0}), median of the rounds; the empty database against it: {:.2}",
                baseline.name(),
                rate.steady,
                rate.overall,
                self.ratio(self.rate(Baseline::AsMigrated), *baseline)
            );
        }
        print!("{out}");
    }

    fn json(&self) -> Value {
        let rate = |w: WorkerRate| json!({"receipts": w.receipts, "steady_per_second": w.steady, "overall_per_second": w.overall});
        let empty = self.rate(Baseline::AsMigrated);
        json!({
            "settings": {"customers": self.customers},
            "load_average": {"start": self.load.0, "end": self.load.1},
            "size": {
                "customers": self.size.customers,
                "ledger_entries": self.size.entries,
                "receipts": self.size.receipts,
                "notifications": self.size.notifications,
                "bills": self.size.bills,
            },
            "fill_seconds": self.fill.map(|f| f.seconds),
            "reads": self.reads.iter().map(|r| json!({
                "read": r.name,
                "who": r.who,
                "samples": r.samples,
                "p50_ms": r.p50_ms,
                "p99_ms": r.p99_ms,
                "max_ms": r.max_ms,
                "p99_target_met": r.p99_ms < READ_P99_TARGET_MS,
            })).collect::<Vec<_>>(),
            "worker": {
                "filled": rate(self.filled_worker),
                "empty": self.baselines.iter().map(|(b, w)| json!({
                    "database": b.name(),
                    "median": rate(*w),
                    "empty_against_it": self.ratio(empty, *b),
                })).collect::<Vec<_>>(),
                "ratio": self.worker_ratio(),
                "target_met": self.worker_ratio() >= 1.0 - WORKER_TOLERANCE,
            },
        })
    }
}
