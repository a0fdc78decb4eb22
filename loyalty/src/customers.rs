//! Customers of an organization: creation, search, the promo-code rules and the operator's
//! movements of their wallets.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::error::{ConflictCode, Error, Result};
use crate::ledger::{self, EntryKind, NewEntry, Source, Wallet, describe};
use crate::money::{Amount, serialize_decimal};
use crate::notifications::{self, Note};
use crate::orgs::Organization;
use crate::rules;
use crate::time::Stamp;

/// A customer as the operator API creates one.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCustomer {
    #[schema(max_length = 512)]
    pub first_name: Option<String>,
    #[schema(max_length = 512)]
    pub last_name: Option<String>,
    /// International format; spaces, dashes and brackets are dropped (`+7 747 247-91-97`).
    #[schema(pattern = r"^[ ()-]*\+?([ ()-]*[0-9]){7,15}[ ()-]*$")]
    pub phone_number: Option<String>,
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::bills::deserialize_optional_whole")]
    pub telegram_id: Option<i64>,
    #[schema(max_length = 512)]
    pub username: Option<String>,
    #[schema(max_length = 512)]
    pub photo_url: Option<String>,
    #[serde(default)]
    pub is_premium: bool,
}

/// Keeps `+` and digits; refuses what cannot be a phone number.
pub fn normalize_phone(raw: &str) -> Result<String> {
    let kept: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'))
        .collect();
    let digits = kept.strip_prefix('+').unwrap_or(&kept);
    if !(7..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid(
            "phone_number",
            "must be a phone number like +77472479197",
        ));
    }
    Ok(format!("+{digits}"))
}

fn check_text(field: &str, value: &Option<String>, max: usize) -> Result<()> {
    match value {
        Some(v) if v.chars().count() > max => Err(Error::invalid(
            field,
            format!("must be at most {max} characters"),
        )),
        _ => Ok(()),
    }
}

pub async fn create(conn: &mut PgConnection, org_id: i64, new: &NewCustomer) -> Result<i64> {
    for (field, value) in [
        ("first_name", &new.first_name),
        ("last_name", &new.last_name),
        ("username", &new.username),
        ("photo_url", &new.photo_url),
    ] {
        check_text(field, value, 512)?;
    }
    let phone = new
        .phone_number
        .as_deref()
        .map(normalize_phone)
        .transpose()?;
    if new
        .first_name
        .as_deref()
        .is_none_or(|n| n.trim().is_empty())
        && phone.is_none()
        && new.telegram_id.is_none()
    {
        return Err(Error::invalid(
            "first_name",
            "a customer needs a first name, a phone number or a telegram_id",
        ));
    }
    if new.telegram_id.is_some_and(|id| id <= 0) {
        return Err(Error::invalid(
            "telegram_id",
            "must be a positive Telegram user id",
        ));
    }
    // Ids come from one sequence; an imported customer may already hold the next one in this
    // organization, in which case the next value is taken.
    loop {
        let inserted = sqlx::query_scalar(
            "insert into customers (org_id, id, first_name, last_name, phone_number, telegram_id, username,
                                    photo_url, is_premium)
             select $1, nextval('customer_ids'), $2, $3, $4, $5, $6, $7, $8
             where exists (select 1 from organizations where id = $1)
             on conflict (org_id, id) do nothing
             returning id",
        )
        .bind(org_id)
        .bind(&new.first_name)
        .bind(&new.last_name)
        .bind(&phone)
        .bind(new.telegram_id)
        .bind(&new.username)
        .bind(&new.photo_url)
        .bind(new.is_premium)
        .fetch_optional(&mut *conn)
        .await;
        match inserted {
            Ok(Some(id)) => {
                let org = crate::orgs::get(conn, org_id).await?;
                welcome(conn, &org, id).await?;
                return Ok(id);
            }
            Ok(None) if org_missing(conn, org_id).await? => {
                return Err(Error::NotFound("organization"));
            }
            Ok(None) => continue,
            Err(err) if crate::error::violated_constraint(&err) == Some("customers_telegram") => {
                return Err(Error::conflict(
                    ConflictCode::TelegramIdTaken,
                    "another customer of this organization has this telegram_id",
                ));
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// The organization's welcome bonus (`welcome_bonus`, when above zero), credited to a new
/// customer once: at creation, or on the first Mini App visit of one created before the bonus was
/// set. The ledger's unique key keeps it once-only under retries and concurrent first visits.
/// `false` when there is none or it was credited before.
pub async fn welcome(
    conn: &mut PgConnection,
    org: &Organization,
    customer_id: i64,
) -> Result<bool> {
    let settings = &org.bonus_program_settings;
    let Ok(amount) = Amount::new(settings.welcome_bonus.get()) else {
        return Ok(false);
    };
    let at = Stamp::now_in(org.time_zone);
    let expires_at = rules::lots::expires_at(at.utc(), settings.bonus_lifetime_days)
        .map_err(|e| Error::invalid("bonus_lifetime_days", e.to_string()))?;
    crate::schedule::credit_once(
        conn,
        &crate::schedule::Once {
            org,
            customer_id,
            amount,
            source: Source::Welcome,
            reference: "welcome",
            description: describe::WELCOME,
            at,
            expires_at,
            kind: notifications::NotificationKind::WelcomeBonus,
        },
    )
    .await
}

async fn org_missing(conn: &mut PgConnection, org_id: i64) -> Result<bool> {
    let found: Option<i64> = sqlx::query_scalar("select id from organizations where id = $1")
        .bind(org_id)
        .fetch_optional(conn)
        .await?;
    Ok(found.is_none())
}

/// A line of the customer search.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CustomerSummary {
    #[serde(serialize_with = "crate::legacy::id_as_string")]
    #[schema(value_type = String)]
    pub id: i64,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub username: Option<String>,
    pub phone_number: Option<String>,
    pub telegram_id: Option<i64>,
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub bonuses: Decimal,
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub referral_bonuses: Decimal,
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub debts: Decimal,
}

/// The query of one search variant: every customer or those matching, from an offset or after
/// an id. Each is its own statement so each is planned for what it is (the match is a union of
/// trigram-index ranges, the whole list a walk of the primary key), which a shared statement with
/// `$2 = '' or …` would not be once PostgreSQL settles on a generic plan.
macro_rules! search_sql {
    ($filter:literal, $page:literal) => {
        concat!(
            "select id, first_name, last_name, username, phone_number, telegram_id, bonuses, referral_bonuses, debts
             from customers where org_id = $1 ",
            $filter,
            $page
        )
    };
}

/// Customers whose name, username or phone contains `q`, or whose id it is (all when empty),
/// oldest first, from `start` (an offset, or after a customer's id: `crate::db::id_cursor`).
pub async fn search(
    conn: &mut PgConnection,
    org_id: i64,
    q: &str,
    limit: i64,
    start: &crate::db::PageStart<i64>,
) -> Result<Vec<CustomerSummary>> {
    use crate::db::PageStart;

    let q = q.trim();
    let escaped = q
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    let pattern = format!("%{escaped}%");
    let digits: String = q.chars().filter(char::is_ascii_digit).collect();
    // Null matches no phone (an empty pattern would match them all).
    let phone = (!digits.is_empty()).then(|| format!("%{digits}%"));
    // Only an id written as the id is written (`id::text = q` before): "007" is not customer 7.
    let id = q.parse::<i64>().ok().filter(|id| id.to_string() == q);
    let sql: &'static str = match (q.is_empty(), start) {
        (true, PageStart::Offset(_)) => search_sql!(
            "and $2::text is null and $3::text is null and $4::bigint is null",
            " order by id limit $5 offset $6"
        ),
        (true, PageStart::After(_)) => search_sql!(
            "and $2::text is null and $3::text is null and $4::bigint is null",
            " and id > $6 order by id limit $5"
        ),
        (false, PageStart::Offset(_)) => search_sql!(
            "and ((coalesce(first_name, '') || ' ' || coalesce(last_name, '')) ilike $2
                      or username ilike $2 or phone_number like $3 or id = $4)",
            " order by id limit $5 offset $6"
        ),
        (false, PageStart::After(_)) => search_sql!(
            "and ((coalesce(first_name, '') || ' ' || coalesce(last_name, '')) ilike $2
                      or username ilike $2 or phone_number like $3 or id = $4)",
            " and id > $6 order by id limit $5"
        ),
    };
    let (pattern, phone, id) = if q.is_empty() {
        (None, None, None)
    } else {
        (Some(pattern), phone, id)
    };
    let sixth = match start {
        PageStart::Offset(offset) | PageStart::After(offset) => *offset,
    };
    Ok(sqlx::query_as(sql)
        .bind(org_id)
        .bind(pattern)
        .bind(phone)
        .bind(id)
        .bind(limit)
        .bind(sixth)
        .fetch_all(conn)
        .await?)
}

/// The wallet figures of a customer after an operation.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Balances {
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub bonuses: Decimal,
    /// Bonuses not reserved by open bills.
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub bonuses_available: Decimal,
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub referral_bonuses: Decimal,
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub referral_bonuses_available: Decimal,
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub debts: Decimal,
}

/// Locks the customer's row for the rest of the transaction and returns its balances: every change
/// to one customer's wallets serializes here.
pub async fn lock(conn: &mut PgConnection, org_id: i64, id: i64) -> Result<Balances> {
    sqlx::query_as(
        "select bonuses, bonuses - bonuses_held as bonuses_available, referral_bonuses,
                referral_bonuses - referral_bonuses_held as referral_bonuses_available, debts
         from customers where org_id = $1 and id = $2 for update",
    )
    .bind(org_id)
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or(Error::NotFound("customer"))
}

/// A customer a request names by `customer_id` and this organization does not have: the
/// request's fault (422), not a missing resource (404).
pub fn unknown_in_request(err: Error) -> Error {
    match err {
        Error::NotFound(_) => Error::invalid(
            "customer_id",
            "no customer of this organization has this id",
        ),
        other => other,
    }
}

/// Parses `PROMO<id>` (any case, surrounding blanks ignored) into the referrer's id.
pub fn parse_promo_code(code: &str) -> Option<i64> {
    let code = code.trim();
    let digits = code
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("PROMO"))
        .map(|_| &code[5..])?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|id| *id > 0)
}

/// A friend's promo code: credits `referral_promo_bonus`, sets `referred_by`, and the customer
/// joins the friend's `referrals`. Refused for the customer's own code, an unknown code, a customer
/// already referred, and after the first purchase.
pub async fn apply_promo(
    conn: &mut PgConnection,
    org: &Organization,
    id: i64,
    code: &str,
) -> Result<Balances> {
    // The customer and the friend whose code it is, both locked in the program's order
    // (`crate::locks`): the friend's row is read for the referral chain and referenced by the new
    // `referred_by`, so two customers entering each other's codes at once serialize here.
    let friend = parse_promo_code(code).filter(|f| *f != id);
    let keys: Vec<(i64, i64)> = std::iter::once(id)
        .chain(friend)
        .map(|c| (org.id, c))
        .collect();
    if !crate::locks::customers(conn, &keys)
        .await?
        .contains(&(org.id, id))
    {
        return Err(Error::NotFound("customer"));
    }
    let (referred_by, has_made_first_purchase): (Option<i64>, bool) = sqlx::query_as(
        "select referred_by, has_made_first_purchase from customers where org_id = $1 and id = $2",
    )
    .bind(org.id)
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    let state = rules::PromoState {
        referred_by,
        has_made_first_purchase,
    };
    let effects = rules::promo_effects(
        &org.bonus_program_settings,
        id,
        parse_promo_code(code),
        &state,
    )?;
    let referrer = effects.referrer;
    // The referrer must exist and must not have been referred, directly or through friends, by
    // this customer: referrals form no loop.
    let chain: Option<bool> = sqlx::query_scalar(
        "with recursive up(id, referred_by, depth) as (
             select id, referred_by, 0 from customers where org_id = $1 and id = $2
             union all
             select c.id, c.referred_by, up.depth + 1 from customers c
             join up on c.org_id = $1 and c.id = up.referred_by where up.depth < 1000
         )
         select bool_or(id = $3) from up",
    )
    .bind(org.id)
    .bind(referrer)
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    match chain {
        None => return Err(rules::unknown_promo_code()),
        Some(true) => {
            return Err(Error::invalid(
                "code",
                "this friend was referred by this customer",
            ));
        }
        Some(false) => {}
    }
    sqlx::query(
        "update customers set referred_by = $3, referral_order = nextval('referral_order')
         where org_id = $1 and id = $2",
    )
    .bind(org.id)
    .bind(id)
    .bind(referrer)
    .execute(&mut *conn)
    .await?;
    if let Some(amount) = effects.bonus {
        let at = Stamp::now_in(org.time_zone);
        let reference = referrer.to_string();
        ledger::post(
            conn,
            &NewEntry {
                org_id: org.id,
                customer_id: id,
                wallet: Wallet::Main,
                kind: EntryKind::Accrual,
                amount,
                description: describe::PROMO,
                source: Source::Promo,
                source_ref: Some(&reference),
                at,
            },
        )
        .await?;
        credit_lot(
            conn,
            org,
            id,
            Wallet::Main,
            amount.get(),
            at,
            Source::Promo,
            Some(&reference),
        )
        .await?;
        let note = Note {
            org_id: org.id,
            customer_id: id,
            kind: notifications::NotificationKind::PromoBonus,
            payload: serde_json::json!({ "amount": amount.get().to_string() }),
            trace_id: code,
        };
        notifications::queue(conn, std::slice::from_ref(&note)).await?;
    }
    lock(conn, org.id, id).await
}

/// What an operator does to a bonus wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BonusOp {
    Accrue,
    Deduct,
}

/// What an operator does to the debt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DebtOp {
    Add,
    Pay,
}

/// An operator's movement of one wallet; taking out more than is there is a `Conflict`.
pub struct OperatorMove<'a> {
    pub wallet: Wallet,
    pub kind: EntryKind,
    pub amount: Amount,
    pub description: &'a str,
    /// The request behind it (its idempotency key, when given), kept as the entry's source.
    pub reference: Option<&'a str>,
    /// Who made it, kept with the entry (`platform`, `staff:<id>`, `key:<id>`).
    pub actor: crate::access::Actor,
}

pub async fn operator_move(
    conn: &mut PgConnection,
    org: &Organization,
    id: i64,
    m: &OperatorMove<'_>,
) -> Result<Balances> {
    if matches!(m.wallet, Wallet::Pending | Wallet::ReferralPending) {
        return Err(Error::invalid(
            "wallet",
            "pending bonuses move only by the sales, refunds and activations that made them",
        ));
    }
    lock(conn, org.id, id).await?;
    let at = Stamp::now_in(org.time_zone);
    ledger::post_by(
        conn,
        &NewEntry {
            org_id: org.id,
            customer_id: id,
            wallet: m.wallet,
            kind: m.kind,
            amount: m.amount,
            description: m.description,
            source: Source::Operator,
            source_ref: m.reference,
            at,
        },
        &m.actor.to_string(),
    )
    .await?;
    // The bonus wallets' lots follow: an accrual opens one, a deduction takes from them.
    if m.wallet != Wallet::Debt {
        match m.kind {
            EntryKind::Accrual => {
                credit_lot(
                    conn,
                    org,
                    id,
                    m.wallet,
                    m.amount.get(),
                    at,
                    Source::Operator,
                    m.reference,
                )
                .await?;
            }
            _ => {
                crate::lots::spend(
                    conn,
                    org.id,
                    id,
                    m.wallet,
                    m.amount.get(),
                    Source::Operator,
                    m.reference,
                )
                .await?;
            }
        }
    }
    if m.kind == EntryKind::Accrual && m.wallet != Wallet::Debt {
        let note = Note {
            org_id: org.id,
            customer_id: id,
            kind: notifications::NotificationKind::OperatorAccrual,
            payload: serde_json::json!({ "amount": m.amount.get().to_string(), "wallet": m.wallet.as_str() }),
            trace_id: m.reference.unwrap_or_default(),
        };
        notifications::queue(conn, std::slice::from_ref(&note)).await?;
    }
    lock(conn, org.id, id).await
}

/// Opens the lot of a credit spendable at once (an operator's accrual, a promo bonus): it expires
/// `bonus_lifetime_days` after `at`, or never.
#[allow(clippy::too_many_arguments)]
async fn credit_lot(
    conn: &mut PgConnection,
    org: &Organization,
    customer_id: i64,
    wallet: Wallet,
    amount: Decimal,
    at: Stamp,
    source: Source,
    source_ref: Option<&str>,
) -> Result<()> {
    let timing = rules::credit_timing(&org.bonus_program_settings, at.utc(), false)
        .map_err(|e| Error::invalid("amount", e.to_string()))?;
    crate::lots::open(
        conn,
        &[crate::lots::NewLot {
            org_id: org.id,
            customer_id,
            wallet,
            amount,
            pending: false,
            activates_at: timing.activates_at,
            expires_at: timing.expires_at,
            source,
            source_ref,
            invoice_id: None,
        }],
    )
    .await?;
    Ok(())
}

/// A Mini App visit: the customer of this Telegram user (created on the first visit), with the
/// profile refreshed, `visited_at` set, and a reachable chat again. On the first visit the customer
/// is welcomed with a notification carrying their promo code. Returns the id and whether this was
/// the first visit.
pub async fn visit(
    conn: &mut PgConnection,
    org: &Organization,
    user: &crate::init_data::TelegramUser,
) -> Result<(i64, bool)> {
    let find = "select id, has_been_welcomed from customers where org_id = $1 and telegram_id = $2 for update";
    let mut found: Option<(i64, bool)> = sqlx::query_as(find)
        .bind(org.id)
        .bind(user.id)
        .fetch_optional(&mut *conn)
        .await?;
    if found.is_none() {
        let new = NewCustomer {
            first_name: Some(user.first_name.clone()),
            last_name: user.last_name.clone(),
            phone_number: None,
            telegram_id: Some(user.id),
            username: user.username.clone(),
            photo_url: user.photo_url.clone(),
            is_premium: user.is_premium,
        };
        // A savepoint, so that losing the race to a concurrent first visit (the unique
        // telegram_id refuses this insert) leaves the transaction usable.
        sqlx::query("savepoint first_visit")
            .execute(&mut *conn)
            .await?;
        match create(conn, org.id, &new).await {
            Ok(_) => {
                sqlx::query("release savepoint first_visit")
                    .execute(&mut *conn)
                    .await?;
            }
            // A concurrent first visit created it: this request is a returning visit.
            Err(e) if e.conflict_code() == Some(ConflictCode::TelegramIdTaken) => {
                sqlx::query("rollback to savepoint first_visit")
                    .execute(&mut *conn)
                    .await?;
            }
            Err(other) => return Err(other),
        }
        found = sqlx::query_as(find)
            .bind(org.id)
            .bind(user.id)
            .fetch_optional(&mut *conn)
            .await?;
    }
    let (id, welcomed) = found.ok_or(Error::NotFound("customer"))?;
    sqlx::query(
        "update customers set first_name = $3, last_name = $4, username = $5, photo_url = $6, is_premium = $7,
                visited_at = now(), has_been_welcomed = true,
                telegram_unreachable_at = null, telegram_unreachable_reason = null
         where org_id = $1 and id = $2",
    )
    .bind(org.id)
    .bind(id)
    .bind(&user.first_name)
    .bind(&user.last_name)
    .bind(&user.username)
    .bind(&user.photo_url)
    .bind(user.is_premium)
    .execute(&mut *conn)
    .await?;
    if !welcomed {
        let code = format!("PROMO{id}");
        let note = Note {
            org_id: org.id,
            customer_id: id,
            kind: notifications::NotificationKind::Welcome,
            payload: serde_json::json!({ "promo_code": code }),
            trace_id: &code,
        };
        notifications::queue(conn, std::slice::from_ref(&note)).await?;
        welcome(conn, org, id).await?;
    }
    Ok((id, !welcomed))
}

/// Sets the customer's birth date (`YYYY-MM-DD`, a real date, not in the future, not before
/// 1900), once: when it is set already, a `BirthDateSet` conflict, unless `correct` (an
/// operator's correction) replaces it. A correction cannot bring a second birthday bonus in a
/// year that had one: the bonus is once per customer and birthday year.
pub async fn set_birth_date(
    conn: &mut PgConnection,
    org: &Organization,
    id: i64,
    text: &str,
    correct: bool,
) -> Result<chrono::NaiveDate> {
    let today = Stamp::now_in(org.time_zone).0.date_naive();
    let date = rules::schedule::parse_birth_date(text, today)
        .map_err(|e| Error::invalid("birth_date", e.to_string()))?;
    lock(conn, org.id, id).await?;
    let set: Option<chrono::NaiveDate> = sqlx::query_scalar(
        "update customers set birth_date = $3
         where org_id = $1 and id = $2 and (birth_date is null or $4)
         returning birth_date",
    )
    .bind(org.id)
    .bind(id)
    .bind(date)
    .bind(correct)
    .fetch_optional(&mut *conn)
    .await?;
    set.ok_or_else(|| {
        Error::conflict(
            ConflictCode::BirthDateSet,
            "the birth date is set already and can be set only once; an operator may correct it",
        )
    })
}

/// What a merge moved.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Merged {
    /// The customer that remains.
    pub id: String,
    /// The customer merged into it (kept, empty, with `merged_into`).
    pub from: String,
    pub entries_moved: i64,
    pub invoices_moved: i64,
    pub referrals_moved: i64,
    pub balances: Balances,
}

/// Merges customer `from` (say, known by phone only) into `into` (say, the Mini App customer):
/// every ledger entry, the wallets, holds, invoices, bills, referrals and notifications move, once.
/// The entries keep their amounts, texts and times; only their owner changes.
pub async fn merge(conn: &mut PgConnection, org_id: i64, into: i64, from: i64) -> Result<Merged> {
    if into == from {
        return Err(Error::invalid(
            "from",
            "a customer cannot be merged into itself",
        ));
    }
    // Both customers and those `from` referred (their `referred_by` changes), locked together in
    // the program's order (`crate::locks`).
    let referred: Vec<i64> = sqlx::query_scalar(
        "select id from customers where org_id = $1 and referred_by = $2 and id <> $3",
    )
    .bind(org_id)
    .bind(from)
    .bind(into)
    .fetch_all(&mut *conn)
    .await?;
    let keys: Vec<(i64, i64)> = [into, from]
        .into_iter()
        .chain(referred)
        .map(|c| (org_id, c))
        .collect();
    let locked = crate::locks::customers(conn, &keys).await?;
    if !locked.contains(&(org_id, from)) {
        return Err(Error::invalid(
            "from",
            "no customer of this organization has this id",
        ));
    }
    if !locked.contains(&(org_id, into)) {
        return Err(Error::NotFound("customer"));
    }
    let (from_merged, into_merged): (bool, bool) = sqlx::query_as(
        "select bool_or(id = $3 and merged_into is not null), bool_or(id = $2 and merged_into is not null)
         from customers where org_id = $1 and id in ($2, $3)",
    )
    .bind(org_id)
    .bind(into)
    .bind(from)
    .fetch_one(&mut *conn)
    .await?;
    if from_merged || into_merged {
        let whom = if from_merged {
            "this customer was already merged"
        } else {
            "the surviving customer was itself merged"
        };
        return Err(Error::conflict(
            ConflictCode::AlreadyMerged,
            format!("{whom} into another"),
        ));
    }
    sqlx::query("set local loyalty.merge = 'on'")
        .execute(&mut *conn)
        .await?;
    let moved = |table: &'static str| {
        format!("update {table} set customer_id = $2 where org_id = $1 and customer_id = $3")
    };
    let mut counts = Vec::new();
    for table in [
        "ledger_entries",
        "invoices",
        "bills",
        "outbox",
        "receipts",
        "refunds",
        // The lots follow the wallets (their moves follow their lots).
        "bonus_lots",
    ] {
        let done = sqlx::query(sqlx::AssertSqlSafe(moved(table)))
            .bind(org_id)
            .bind(into)
            .bind(from)
            .execute(&mut *conn)
            .await?;
        counts.push(i64::try_from(done.rows_affected()).unwrap_or(i64::MAX));
    }
    sqlx::query("set local loyalty.merge = 'off'")
        .execute(&mut *conn)
        .await?;
    let referrals = sqlx::query(
        "update customers set referred_by = $2 where org_id = $1 and referred_by = $3 and id <> $2",
    )
    .bind(org_id)
    .bind(into)
    .bind(from)
    .execute(&mut *conn)
    .await?;
    // Wallets and holds follow their entries and bills; the rest of the profile fills gaps only.
    sqlx::query(
        "update customers t set
             bonuses = t.bonuses + f.bonuses, referral_bonuses = t.referral_bonuses + f.referral_bonuses,
             pending_bonuses = t.pending_bonuses + f.pending_bonuses,
             pending_referral_bonuses = t.pending_referral_bonuses + f.pending_referral_bonuses,
             spent_total = t.spent_total + f.spent_total,
             debts = t.debts + f.debts, bonuses_held = t.bonuses_held + f.bonuses_held,
             referral_bonuses_held = t.referral_bonuses_held + f.referral_bonuses_held,
             phone_number = coalesce(t.phone_number, f.phone_number),
             first_name = coalesce(t.first_name, f.first_name), last_name = coalesce(t.last_name, f.last_name),
             has_made_first_purchase = t.has_made_first_purchase or f.has_made_first_purchase,
             referred_by = coalesce(nullif(t.referred_by, f.id), nullif(f.referred_by, t.id)),
             referral_order = case when t.referred_by is null then f.referral_order else t.referral_order end
         from customers f
         where t.org_id = $1 and t.id = $2 and f.org_id = $1 and f.id = $3",
    )
    .bind(org_id)
    .bind(into)
    .bind(from)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "update customers set bonuses_held = 0, referral_bonuses_held = 0, bonuses = 0, referral_bonuses = 0, debts = 0,
                              pending_bonuses = 0, pending_referral_bonuses = 0, spent_total = 0,
                              referred_by = null, merged_into = $2
         where org_id = $1 and id = $3",
    )
    .bind(org_id)
    .bind(into)
    .bind(from)
    .execute(&mut *conn)
    .await?;
    Ok(Merged {
        id: into.to_string(),
        from: from.to_string(),
        entries_moved: counts[0],
        invoices_moved: counts[1],
        referrals_moved: i64::try_from(referrals.rows_affected()).unwrap_or(i64::MAX),
        balances: lock(conn, org_id, into).await?,
    })
}

// ---- For the notifier: a customer as a Telegram recipient. ----

/// What the notifier needs of a customer to write to them.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TelegramRecipient {
    pub telegram_id: Option<i64>,
    /// Telegram refused the chat; not written to until they come back through the Mini App.
    pub unreachable: bool,
    pub bonuses: Decimal,
    pub referral_bonuses: Decimal,
}

/// The customer as a Telegram recipient, if they exist.
pub async fn telegram_recipient(
    conn: &mut PgConnection,
    org_id: i64,
    customer_id: i64,
) -> Result<Option<TelegramRecipient>> {
    Ok(sqlx::query_as(
        "select telegram_id, telegram_unreachable_at is not null as unreachable, bonuses, referral_bonuses
         from customers where org_id = $1 and id = $2",
    )
    .bind(org_id)
    .bind(customer_id)
    .fetch_optional(conn)
    .await?)
}

/// Whether the bot may write to the customer: they let it (`/start`, or write access granted in
/// the Mini App) and Telegram has not refused their chat since.
pub async fn can_message(conn: &mut PgConnection, org_id: i64, customer_id: i64) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "select messages_allowed_at is not null and telegram_unreachable_at is null
         from customers where org_id = $1 and id = $2",
    )
    .bind(org_id)
    .bind(customer_id)
    .fetch_optional(conn)
    .await?
    .unwrap_or(false))
}

/// Telegram refused the chat for good: the customer is not written to again until they come
/// back through the Mini App.
pub async fn mark_telegram_unreachable(
    conn: &mut PgConnection,
    org_id: i64,
    customer_id: i64,
    reason: &str,
) -> Result<()> {
    sqlx::query(
        "update customers set telegram_unreachable_at = now(), telegram_unreachable_reason = $3
         where org_id = $1 and id = $2",
    )
    .bind(org_id)
    .bind(customer_id)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promo_codes_parse_in_any_case() {
        assert_eq!(parse_promo_code("PROMO82423"), Some(82423));
        assert_eq!(parse_promo_code(" promo82423 "), Some(82423));
        assert_eq!(parse_promo_code("PROMO"), None);
        assert_eq!(parse_promo_code("PROMO-1"), None);
        assert_eq!(parse_promo_code("FRIEND82423"), None);
        assert_eq!(parse_promo_code("ПРОМО1"), None);
    }

    #[test]
    fn phones_are_normalized_or_refused() {
        assert_eq!(
            normalize_phone("+7 747 247-91-97").ok().as_deref(),
            Some("+77472479197")
        );
        assert_eq!(
            normalize_phone("996500398754").ok().as_deref(),
            Some("+996500398754")
        );
        assert!(normalize_phone("call me").is_err());
        assert!(normalize_phone("+12").is_err());
    }
}
