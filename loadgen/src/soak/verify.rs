//! The invariants a soak proves at its end, read from the database, the broker and the fake Bot
//! API; each check says how many things it looked at and shows the first offenders.

use std::collections::HashMap;

use sqlx::PgPool;

use super::bot;
use super::pos::{Kind, Poison, Receipt};

/// One invariant and whether it held.
pub struct Check {
    pub name: &'static str,
    pub checked: u64,
    /// The offenders (up to `SHOWN` of them described).
    pub violations: u64,
    pub examples: Vec<String>,
}

const SHOWN: usize = 5;

impl Check {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            checked: 0,
            violations: 0,
            examples: Vec::new(),
        }
    }

    fn expect(&mut self, ok: bool, example: impl FnOnce() -> String) {
        self.checked += 1;
        if !ok {
            self.violations += 1;
            if self.examples.len() < SHOWN {
                self.examples.push(example());
            }
        }
    }

    /// A check whose count of offenders comes from one query over `checked` rows.
    fn counted(name: &'static str, checked: i64, offenders: i64, example: Option<String>) -> Self {
        Self {
            name,
            checked: u64::try_from(checked).unwrap_or(0),
            violations: u64::try_from(offenders).unwrap_or(0),
            examples: example.into_iter().collect(),
        }
    }
}

/// What the soak knows beyond the database: the final answer each receipt got, the dead letters
/// on the receipts queue (message id, reason), the Bot API's counts, the queues' depths.
pub struct Evidence<'a> {
    pub org: i64,
    pub receipts: &'a [Receipt],
    pub finals: &'a [Option<u16>],
    pub dead_letters: &'a [(String, Option<String>)],
    pub bot: &'a bot::Counts,
    /// Every queue of the soak's topology but the dead-letter ones, with its ready and
    /// unacknowledged messages.
    pub queues: &'a [(String, u64, u64)],
}

/// A receipt row's status and reason.
type Row = (String, String);

pub async fn run(db: &PgPool, evidence: &Evidence<'_>) -> anyhow::Result<Vec<Check>> {
    let org = evidence.org;
    let rows: HashMap<String, Row> = sqlx::query_as::<_, (String, String, String)>(
        "select event_id, status, coalesce(last_error, reason, '') from receipts
         where org_id = $1 and event_id like 'soak-%'",
    )
    .bind(org)
    .fetch_all(db)
    .await?
    .into_iter()
    .map(|(id, status, why)| (id, (status, why)))
    .collect();
    let processed: HashMap<String, i64> = sqlx::query_as(
        "select receipt_id, count(*) from receipts
         where org_id = $1 and receipt_id like 'soak-%' and status = 'processed' group by receipt_id",
    )
    .bind(org)
    .fetch_all(db)
    .await?
    .into_iter()
    .collect();
    // (wallet, kind, entries) per receipt id.
    let mut effects: HashMap<String, Vec<(String, String, i64)>> = HashMap::new();
    for (receipt, wallet, kind, n) in sqlx::query_as::<_, (String, String, String, i64)>(
        "select source_ref, wallet, kind, count(*) from ledger_entries
         where org_id = $1 and source_ref like 'soak-%' group by 1, 2, 3",
    )
    .bind(org)
    .fetch_all(db)
    .await?
    {
        effects.entry(receipt).or_default().push((wallet, kind, n));
    }
    let bills: HashMap<i64, (String, Option<String>)> =
        sqlx::query_as::<_, (i64, String, Option<String>)>(
            "select id, status, paid_by_receipt from bills where org_id = $1",
        )
        .bind(org)
        .fetch_all(db)
        .await?
        .into_iter()
        .map(|(id, status, by)| (id, (status, by)))
        .collect();
    let dead_letters: HashMap<&str, &Option<String>> = evidence
        .dead_letters
        .iter()
        .map(|(id, why)| (id.as_str(), why))
        .collect();

    let mut once = Check::new("every receipt that got a 200 applied");
    let mut twice = Check::new("no receipt applied twice");
    let mut unanswered = Check::new("every valid receipt answered 200 in the end");
    let mut refused = Check::new("every malformed receipt refused with a 4xx, nothing changed");
    let mut poisoned = Check::new("every poison receipt ended with its reason, nothing applied");
    for (receipt, status) in evidence.receipts.iter().zip(evidence.finals) {
        let row = rows.get(&receipt.event_id);
        let effect = effects.get(&receipt.receipt_id);
        let bill = receipt.bill.and_then(|b| bills.get(&b));
        match receipt.kind {
            Kind::Sale => {
                unanswered.expect(*status == Some(200), || {
                    format!("{}: final answer {status:?}", receipt.event_id)
                });
                if *status != Some(200) {
                    continue;
                }
                let applied = processed.get(&receipt.receipt_id).copied().unwrap_or(0);
                let doubled = effect.is_some_and(|e| e.iter().any(|(_, _, n)| *n > 1));
                let paid = bill.is_some_and(|(s, by)| {
                    s == "paid" && by.as_deref() == Some(receipt.receipt_id.as_str())
                });
                let consistent = if applied == 0 {
                    effect.is_none()
                } else {
                    applied == 1 && effect.is_some() && !doubled && paid
                };
                twice.expect(consistent, || {
                    format!(
                        "{}: {applied} processed rows, ledger {effect:?}, bill {bill:?}",
                        receipt.receipt_id
                    )
                });
                once.expect(applied == 1, || {
                    format!(
                        "{}: {applied} processed rows, ledger {effect:?}, bill {bill:?}, row {row:?}",
                        receipt.receipt_id
                    )
                });
            }
            Kind::Malformed(_) => {
                let open = bill.is_some_and(|(s, _)| s == "open");
                let is_4xx = status.is_some_and(|s| (400..500).contains(&s));
                refused.expect(is_4xx && row.is_none() && effect.is_none() && open, || {
                    format!(
                        "{} ({}): answered {status:?}, row {row:?}, ledger {effect:?}, bill {bill:?}",
                        receipt.event_id, receipt.kind
                    )
                });
            }
            Kind::Poison(variant) => {
                let refused_at_edge =
                    !variant.is_direct() && status.is_some_and(|s| (400..500).contains(&s));
                let accepted = variant.is_direct() || *status == Some(200);
                let letter = dead_letters.get(receipt.event_id.as_str());
                // Operators find a dead receipt by its row; a message that is not a receipt at
                // all can only be a dead letter.
                let ended = match row {
                    Some((s, why)) => {
                        (s == "dead" || (variant == Poison::RefundOfNothing && s == "unmatched"))
                            && !why.is_empty()
                    }
                    None => {
                        variant == Poison::NotAMessage && letter.is_some_and(|why| why.is_some())
                    }
                };
                // The bill a huge sale names stays open; the paid bill a zero refund names stays paid.
                let bill_kept = match variant {
                    Poison::HugeTotal => bill.is_some_and(|(s, _)| s == "open"),
                    _ => true,
                };
                let ok = effect.is_none()
                    && bill_kept
                    && if refused_at_edge {
                        row.is_none()
                    } else {
                        accepted && ended
                    };
                poisoned.expect(ok, || {
                    format!(
                        "{} ({}): answered {status:?}, row {row:?}, dead letter {letter:?}, ledger {effect:?}, bill {bill:?}",
                        receipt.event_id, receipt.kind
                    )
                });
            }
        }
    }

    let (customers, unbalanced, example): (i64, i64, Option<String>) = sqlx::query_as(
        "with sums as (
             select customer_id,
                    sum(amount * case when kind = 'accrual' then 1 else -1 end) filter (where wallet = 'main') as main,
                    sum(amount * case when kind = 'accrual' then 1 else -1 end) filter (where wallet = 'referral') as referral,
                    sum(amount * case when kind = 'accrual' then 1 else -1 end) filter (where wallet = 'debt') as debt
             from ledger_entries where org_id = $1 group by customer_id),
         bad as (
             select c.id, c.bonuses, c.referral_bonuses, c.debts, s.main, s.referral, s.debt
             from customers c left join sums s on s.customer_id = c.id
             where c.org_id = $1
               and (c.bonuses <> coalesce(s.main, 0) or c.referral_bonuses <> coalesce(s.referral, 0)
                    or c.debts <> coalesce(s.debt, 0)))
         select (select count(*) from customers where org_id = $1), (select count(*) from bad),
                (select format('customer %s: cached %s/%s/%s, entries %s/%s/%s', id, bonuses, referral_bonuses,
                               debts, main, referral, debt) from bad limit 1)",
    )
    .bind(org)
    .fetch_one(db)
    .await?;
    let balances = Check::counted(
        "cached balances equal the sums of their entries",
        customers,
        unbalanced,
        example,
    );

    let (negative, example): (i64, Option<String>) = sqlx::query_as(
        "with bad as (select id, bonuses, referral_bonuses, debts, bonuses_held, referral_bonuses_held
                      from customers where org_id = $1
                        and least(bonuses, referral_bonuses, debts, bonuses_held, referral_bonuses_held) < 0)
         select (select count(*) from bad),
                (select format('customer %s: %s/%s/%s held %s/%s', id, bonuses, referral_bonuses, debts,
                               bonuses_held, referral_bonuses_held) from bad limit 1)",
    )
    .bind(org)
    .fetch_one(db)
    .await?;
    let below_zero = Check::counted("no wallet below zero", customers, negative, example);

    let (unheld, example): (i64, Option<String>) = sqlx::query_as(
        "with open as (
             select customer_id,
                    coalesce(sum(bonus_payment) filter (where bonus_wallet = 'main'), 0) as main,
                    coalesce(sum(bonus_payment) filter (where bonus_wallet = 'referral'), 0) as referral
             from bills where org_id = $1 and status = 'open' group by customer_id),
         bad as (
             select c.id, c.bonuses_held, c.referral_bonuses_held, o.main, o.referral
             from customers c left join open o on o.customer_id = c.id
             where c.org_id = $1
               and (c.bonuses_held <> coalesce(o.main, 0) or c.referral_bonuses_held <> coalesce(o.referral, 0)))
         select (select count(*) from bad),
                (select format('customer %s: held %s/%s, open bills %s/%s', id, bonuses_held,
                               referral_bonuses_held, main, referral) from bad limit 1)",
    )
    .bind(org)
    .fetch_one(db)
    .await?;
    let holds = Check::counted(
        "holds equal the open bills' bonus payments",
        customers,
        unheld,
        example,
    );

    // A call may have reached the Bot API for a row left `sending` (its notifier stopped before
    // recording the answer; the next one marks it `uncertain`, never sends it again).
    let (sent, uncertain): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where status = 'sent'),
                count(*) filter (where status in ('uncertain', 'sending'))
         from outbox where org_id = $1",
    )
    .bind(org)
    .fetch_one(db)
    .await?;
    let calls = i64::try_from(evidence.bot.calls)?;
    let mut notified = Check::counted(
        "every notification sent at most once",
        calls,
        i64::try_from(evidence.bot.repeated.len())?,
        evidence
            .bot
            .repeated
            .first()
            .map(|(chat, text, n)| format!("chat {chat} got {n} times: {text:?}")),
    );
    notified.expect(calls >= sent && calls <= sent + uncertain, || {
        format!(
            "{calls} sendMessage calls for {sent} sent and {uncertain} uncertain or sending notifications"
        )
    });

    let mut drained = Check::new("no message left in a retry or work queue");
    drained.expect(!evidence.queues.is_empty(), || {
        "the broker listed no queue".into()
    });
    for (queue, ready, unacked) in evidence.queues {
        drained.expect(ready + unacked == 0, || {
            format!("{queue}: {ready} ready, {unacked} unacknowledged")
        });
    }
    let retrying = rows.values().filter(|(s, _)| s == "retrying").count();
    drained.expect(retrying == 0, || {
        format!("{retrying} receipts still 'retrying' in the database")
    });

    Ok(vec![
        once, twice, unanswered, refused, poisoned, balances, below_zero, holds, notified, drained,
    ])
}
