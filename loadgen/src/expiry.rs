//! `loadgen expiry`: the rate at which the scheduled expiry step (`loyalty::schedule::expire_due`)
//! burns lots, on an organization COPY-filled with one due lot per customer (10^6 by default),
//! against a baseline in the same run on the same rows: one plain `update bonus_lots set
//! remaining = 0` over them (rolled back, then vacuumed away). The step does far more per lot
//! (locks its customer, writes a ledger entry whose trigger moves the wallet, updates the lot and
//! writes its move), so the ratio says what that costs against the bare row update.
//!
//! The opening balances are written as the migration writes them for existing customers: the
//! wallet and an equal lot, without a ledger entry (the step only needs wallet = lots).

use std::time::Instant;

use anyhow::{Context, bail};
use chrono::{TimeDelta, Utc};

use crate::setup::{Scratch, copy_lines};

#[derive(Debug, Clone, clap::Args)]
pub struct ExpiryArgs {
    /// Due lots (one per customer).
    #[arg(long, default_value_t = 1_000_000)]
    pub lots: usize,
    /// Most lots the step burns in one transaction (the workers' `SCHEDULE_BATCH`).
    #[arg(long, default_value_t = 1000)]
    pub batch: i64,
    #[command(flatten)]
    pub servers: crate::setup::Servers,
}

pub async fn main(args: ExpiryArgs) -> anyhow::Result<()> {
    if args.lots == 0 || args.batch <= 0 {
        bail!("--lots and --batch must be positive");
    }
    let scratch = Scratch::new(&args.servers.database_url, &args.servers.amqp_url)?;
    let outcome = tokio::select! {
        outcome = run(&args, &scratch) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    eprintln!("cleaning up: database {}", scratch.db_name);
    let cleaned = scratch.clean().await;
    outcome?;
    cleaned
}

async fn run(args: &ExpiryArgs, scratch: &Scratch) -> anyhow::Result<()> {
    let n = args.lots;
    let (db_url, _) = scratch.create_database().await?;
    let db = loyalty::db::connect(&db_url, 4).await?;
    eprintln!("[1/4] setup: {n} customers, each with one expired lot of 10");
    let started = Instant::now();
    let org: i64 = sqlx::query_scalar(
        "insert into organizations (name, bonus_lifetime_days) values ('loadgen expiry', 30) returning id",
    )
    .fetch_one(&db)
    .await?;
    let created = Utc::now() - TimeDelta::days(60);
    let expired = Utc::now() - TimeDelta::days(30);
    let (created, expired) = (created.to_rfc3339(), expired.to_rfc3339());
    let mut conn = db.acquire().await?;
    copy_lines(
        &mut conn,
        "copy customers (org_id, id, first_name, bonuses) from stdin",
        n,
        |i| format!("{org}\t{}\tC{i}\t10\n", i + 1),
    )
    .await
    .context("copy customers")?;
    copy_lines(
        &mut conn,
        "copy bonus_lots (org_id, customer_id, wallet, amount, remaining, pending, activates_at,
                          expires_at, source) from stdin",
        n,
        |i| {
            format!(
                "{org}\t{}\tmain\t10\t10\tf\t{created}\t{expired}\timport\n",
                i + 1
            )
        },
    )
    .await
    .context("copy lots")?;
    drop(conn);
    sqlx::query("vacuum analyze").execute(&db).await?;
    eprintln!("      {:.1} s", started.elapsed().as_secs_f64());

    eprintln!("[2/4] baseline: one `update bonus_lots set remaining = 0` over the {n} due lots");
    let mut tx = db.begin().await?;
    let started = Instant::now();
    let updated = sqlx::query(
        "update bonus_lots set remaining = 0
         where org_id = $1 and remaining > 0 and not pending and expires_at <= now()",
    )
    .bind(org)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let baseline = started.elapsed();
    tx.rollback().await?;
    if usize::try_from(updated)? != n {
        bail!("the baseline updated {updated} lots, not {n}");
    }
    let baseline_rate = n as f64 / baseline.as_secs_f64();
    eprintln!(
        "      {:.2} s, {baseline_rate:.0} lots/s",
        baseline.as_secs_f64()
    );
    sqlx::query("vacuum analyze").execute(&db).await?;
    if let Err(err) = sqlx::query("checkpoint").execute(&db).await {
        eprintln!("      (no checkpoint: {err})");
    }

    eprintln!("[3/4] expire_due, batch {}", args.batch);
    let pool = loyalty::db::connect(&db_url, 2).await?;
    let started = Instant::now();
    let burned = loyalty::schedule::expire_due(&pool, Utc::now(), args.batch).await?;
    let step = started.elapsed();
    let step_rate = n as f64 / step.as_secs_f64();
    eprintln!("      {:.2} s, {step_rate:.0} lots/s", step.as_secs_f64());

    eprintln!("[4/4] check: every lot burned once, every wallet empty");
    let (entries, left, wallets): (i64, sqlx::types::Decimal, sqlx::types::Decimal) =
        sqlx::query_as(
            "select (select count(*) from ledger_entries where org_id = $1 and source = 'expiry'),
                    (select coalesce(sum(remaining), 0) from bonus_lots where org_id = $1),
                    (select coalesce(sum(bonuses), 0) from customers where org_id = $1)",
        )
        .bind(org)
        .fetch_one(&db)
        .await?;
    if burned != n || usize::try_from(entries)? != n || !left.is_zero() || !wallets.is_zero() {
        bail!(
            "burned {burned}, {entries} entries, {left} left in lots, {wallets} in wallets; expected {n} and nothing left"
        );
    }
    println!(
        "expiry of {n} lots (batch {}): expire_due {:.2} s = {step_rate:.0} lots/s; \
         baseline plain update {:.2} s = {baseline_rate:.0} lots/s; ratio step/baseline {:.3}",
        args.batch,
        step.as_secs_f64(),
        baseline.as_secs_f64(),
        step_rate / baseline_rate
    );
    Ok(())
}
