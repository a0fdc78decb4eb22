//! The scheduled steps on a timer: every interval, pending lots are activated, expired lots
//! burned, expiry warnings queued and birthday bonuses credited (`loyalty::schedule`), each with
//! the clock's `now`. The steps are idempotent, so any number of workers may run them at once;
//! a tick that fails is logged and the next one takes the rows again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// What one run of the steps did, in rows per step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ran {
    pub activated: usize,
    pub expired: usize,
    pub warned: usize,
    pub birthdays: usize,
}

/// Runs the four steps once, at `now`, in transactions of at most `batch` rows; counts each
/// step's rows in `loyalty_scheduled_rows_total{step}`.
pub async fn run_once(pool: &PgPool, now: DateTime<Utc>, batch: i64) -> loyalty::Result<Ran> {
    use loyalty::schedule;
    let ran = Ran {
        activated: schedule::activate_due(pool, now, batch).await?,
        expired: schedule::expire_due(pool, now, batch).await?,
        warned: schedule::warn_expiring(pool, now, batch).await?,
        birthdays: schedule::birthday_bonuses(pool, now, batch).await?,
    };
    for (step, rows) in [
        ("activate_due", ran.activated),
        ("expire_due", ran.expired),
        ("warn_expiring", ran.warned),
        ("birthday_bonuses", ran.birthdays),
    ] {
        metrics::counter!("loyalty_scheduled_rows_total", "step" => step)
            .increment(u64::try_from(rows).unwrap_or(u64::MAX));
    }
    Ok(ran)
}

/// Runs the steps every `interval` until the task is dropped (an interrupted transaction rolls
/// back; the next run takes its rows).
pub async fn every(pool: PgPool, interval: Duration, batch: i64) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match run_once(&pool, Utc::now(), batch).await {
            Ok(ran) if ran != Ran::default() => tracing::info!(
                activated = ran.activated,
                expired = ran.expired,
                warned = ran.warned,
                birthdays = ran.birthdays,
                "scheduled steps ran"
            ),
            Ok(_) => {}
            Err(err) => {
                tracing::error!(error = %err, "scheduled steps failed; the next run retries")
            }
        }
    }
}
