//! Bills: what a customer is about to pay at the cash register. A bonus payment is held against the
//! wallet when the bill is created, so two open bills can never spend the same bonuses.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};
use sqlx::PgConnection;

use crate::error::{ConflictCode, Error, Result, violated_constraint};
use crate::ledger::{self, Wallet};
use crate::money::{
    Amount, MAX_AMOUNT, Money, MoneyError, Percent, Quantity, exact, round_money, serialize_decimal,
};
use crate::rules::share::{max_bonus_payment, share_cap};
use crate::time::{OrgTimeZone, Stamp};

/// What [`deserialize_id`] accepts, for the API's schema.
pub fn id_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Type};
    AnyOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::Int64,
                )))
                .minimum(Some(1)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                // Up to 18 significant digits: always within an i64.
                .pattern(Some("^\\+?0*[1-9][0-9]{0,17}$")),
        )
        .description(Some("A customer id: a positive number or numeric string"))
        .into()
}

/// An integer as JSON (and the schema's `integer`) means it: `228.0` is the number 228.
fn whole(number: &serde_json::Number) -> Option<i64> {
    number.as_i64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9e18)
            .map(|f| f as i64)
    })
}

/// An optional whole number (`telegram_id`, `product_id`), written `228` or `228.0`.
pub fn deserialize_optional_whole<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<i64>, D::Error> {
    Option::<serde_json::Number>::deserialize(d)?
        .map(|n| whole(&n).ok_or_else(|| serde::de::Error::custom("must be a whole number")))
        .transpose()
}

/// A customer id as a JSON string (the legacy shape) or number.
pub fn deserialize_id<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let id = match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => whole(&n),
        serde_json::Value::String(t) => t.parse().ok(),
        _ => None,
    };
    id.filter(|id| *id > 0).ok_or_else(|| {
        serde::de::Error::custom("must be a customer id: a positive number or numeric string")
    })
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBillItem {
    #[schema(min_length = 1, max_length = 500, pattern = r"\S")]
    pub name: String,
    pub quantity: Quantity,
    pub unit_price: Money,
    /// Unit name shown on the receipt ("Штука", "Грамм").
    pub unit: Option<String>,
    /// VAT rate in percent; rates change, so each line carries its own.
    pub tax_rate: Option<Percent>,
    /// The shop's product id, passed to the register.
    #[serde(default, deserialize_with = "deserialize_optional_whole")]
    pub product_id: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BonusPayment {
    pub amount: Amount,
    #[serde(default = "main_wallet")]
    pub wallet: Wallet,
}

fn main_wallet() -> Wallet {
    Wallet::Main
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBill {
    /// The bill's id in the shop's own accounting system, which its registers already hold
    /// (`47827`); unique per organization. A new id when absent.
    #[serde(default, deserialize_with = "deserialize_optional_whole")]
    #[schema(minimum = 1, format = Int64)]
    pub id: Option<i64>,
    /// When the shop created the bill, as its local wall-clock time without a zone
    /// (`2026-02-27 12:38:41`), in the organization's time zone. Now when absent.
    #[schema(
        pattern = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$",
        example = "2026-02-27 12:38:41"
    )]
    pub date: Option<String>,
    #[serde(deserialize_with = "deserialize_id")]
    #[schema(schema_with = id_schema)]
    pub customer_id: i64,
    /// The number the cashier types or scans; the bill id when absent.
    #[schema(min_length = 1, max_length = 64, pattern = r"\S")]
    pub number: Option<String>,
    #[schema(min_items = 1)]
    pub items: Vec<NewBillItem>,
    pub bonus_payment: Option<BonusPayment>,
}

/// An optional amount, as [`serialize_decimal`] writes one, or null.
pub fn serialize_optional_decimal<S: serde::Serializer>(
    value: &Option<Decimal>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => serialize_decimal(v, s),
        None => s.serialize_none(),
    }
}

/// A stored line of a bill; decimals kept as exact strings in the database.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BillItem {
    pub name: String,
    #[serde(
        serialize_with = "serialize_decimal",
        deserialize_with = "crate::money::deserialize_decimal"
    )]
    #[schema(value_type = f64)]
    pub quantity: Decimal,
    #[serde(
        serialize_with = "serialize_decimal",
        deserialize_with = "crate::money::deserialize_decimal"
    )]
    #[schema(value_type = f64)]
    pub unit_price: Decimal,
    #[serde(
        serialize_with = "serialize_decimal",
        deserialize_with = "crate::money::deserialize_decimal"
    )]
    #[schema(value_type = f64)]
    pub item_total: Decimal,
    pub unit: Option<String>,
    #[schema(value_type = Option<f64>)]
    pub tax_rate: Option<Percent>,
    pub product_id: Option<i64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BillBonusPayment {
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub amount: Decimal,
    pub wallet: Wallet,
}

/// Where a bill stands (the `status` column, and the API's `status`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum BillStatus {
    /// Waiting at the register; its bonus payment is held.
    Open,
    /// A sale receipt paid it.
    Paid,
    Cancelled,
}

impl BillStatus {
    pub const ALL: [BillStatus; 3] = [BillStatus::Open, BillStatus::Paid, BillStatus::Cancelled];

    pub const fn as_str(self) -> &'static str {
        match self {
            BillStatus::Open => "open",
            BillStatus::Paid => "paid",
            BillStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for BillStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A bill as operators see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Bill {
    pub id: i64,
    pub number: String,
    #[serde(serialize_with = "crate::legacy::id_as_string")]
    #[schema(value_type = String)]
    pub customer_id: i64,
    pub status: BillStatus,
    pub items: Vec<BillItem>,
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub total: Decimal,
    pub bonus_payment: Option<BillBonusPayment>,
    /// For an open bill, the most its customer may pay with bonuses: the share of the total the
    /// program allows (`max_bonus_payment_percentage`, rounded down to the cent), and no more than
    /// the wallet holds beyond what other open bills reserve. Null once paid or cancelled.
    #[serde(serialize_with = "serialize_optional_decimal")]
    #[schema(value_type = Option<f64>)]
    pub max_bonus_payment: Option<Decimal>,
    /// RFC 3339 with the organization's offset.
    pub created_at: String,
    /// Local wall-clock time, as the register shows it.
    pub date: String,
}

#[derive(sqlx::FromRow)]
pub struct BillRow {
    pub id: i64,
    pub number: String,
    pub customer_id: i64,
    pub status: BillStatus,
    pub items: sqlx::types::Json<Vec<BillItem>>,
    pub total: Decimal,
    pub bonus_payment: Decimal,
    pub bonus_wallet: Option<Wallet>,
    pub created_at: DateTime<Utc>,
}

impl BillRow {
    /// The bill as operators see it; `max_bonus_payment` as [`Bill::max_bonus_payment`] says.
    pub fn view(self, zone: OrgTimeZone, max_bonus_payment: Option<Decimal>) -> Bill {
        let at = Stamp::in_zone(self.created_at, zone);
        Bill {
            id: self.id,
            number: self.number,
            customer_id: self.customer_id,
            status: self.status,
            items: self.items.0,
            total: self.total,
            bonus_payment: self.bonus_wallet.map(|wallet| BillBonusPayment {
                amount: self.bonus_payment,
                wallet,
            }),
            max_bonus_payment,
            created_at: at.rfc3339(),
            date: at.local_str(),
        }
    }
}

const BILL_COLUMNS: &str =
    "id, number, customer_id, status, items, total, bonus_payment, bonus_wallet, created_at";

/// The `held` column of a wallet that can pay bills.
pub(crate) fn held_column(wallet: Wallet) -> Result<&'static str> {
    match wallet {
        Wallet::Main => Ok("bonuses_held"),
        Wallet::Referral => Ok("referral_bonuses_held"),
        Wallet::Debt | Wallet::Pending | Wallet::ReferralPending => Err(Error::invalid(
            "bonus_payment.wallet",
            "a bill is paid from the main or referral wallet",
        )),
    }
}

/// Creates an open bill; its bonus payment is held at once (409 when the wallet, less what other
/// open bills hold, is short).
pub async fn create(conn: &mut PgConnection, org_id: i64, new: &NewBill) -> Result<Bill> {
    if new.items.is_empty() {
        return Err(Error::invalid("items", "a bill needs at least one item"));
    }
    let mut items = Vec::with_capacity(new.items.len());
    for (i, item) in new.items.iter().enumerate() {
        let name = item.name.trim();
        if name.is_empty() || name.chars().count() > 500 {
            return Err(Error::invalid(
                format!("items[{i}].name"),
                "must be 1 to 500 characters",
            ));
        }
        // The cap on amounts applies to what they add up to as well.
        let item_total = item
            .quantity
            .get()
            .checked_mul(item.unit_price.get())
            .map(|t| exact(round_money(t)))
            .filter(|t| *t <= MAX_AMOUNT)
            .ok_or_else(|| {
                Error::invalid(
                    format!("items[{i}]"),
                    format!("quantity × unit_price {}", MoneyError::TooLarge(MAX_AMOUNT)),
                )
            })?;
        items.push(BillItem {
            name: name.to_owned(),
            quantity: item.quantity.get(),
            unit_price: item.unit_price.get(),
            item_total,
            unit: item.unit.clone(),
            tax_rate: item.tax_rate,
            product_id: item.product_id,
        });
    }
    let total = items
        .iter()
        .try_fold(Decimal::ZERO, |sum, i| sum.checked_add(i.item_total))
        .map(exact)
        .filter(|t| *t <= MAX_AMOUNT)
        .ok_or_else(|| {
            Error::invalid(
                "items",
                format!("the bill's total {}", MoneyError::TooLarge(MAX_AMOUNT)),
            )
        })?;
    if let Some(number) = &new.number {
        if number.trim().is_empty() || number.chars().count() > 64 {
            return Err(Error::invalid("number", "must be 1 to 64 characters"));
        }
    }
    if new.id.is_some_and(|id| id < 1) {
        return Err(Error::invalid("id", "must be a positive whole number"));
    }
    let (zone, share) = program_of(conn, org_id).await?;
    let created_at = new
        .date
        .as_deref()
        .map(|date| shop_date(date, zone))
        .transpose()?;
    crate::customers::lock(conn, org_id, new.customer_id)
        .await
        .map_err(crate::customers::unknown_in_request)?;
    if let Some(payment) = &new.bonus_payment {
        if payment.amount.get() > total {
            return Err(Error::invalid(
                "bonus_payment.amount",
                format!("must not exceed the bill's total {total}"),
            ));
        }
        let cap = share_cap(share, total).map_err(|e| Error::invalid("items", e.to_string()))?;
        if payment.amount.get() > cap {
            return Err(Error::invalid(
                "bonus_payment.amount",
                format!(
                    "must not exceed {cap}: bonuses may pay at most {share}% of the bill's total {total} (max_bonus_payment {cap})"
                ),
            ));
        }
        hold(
            conn,
            org_id,
            new.customer_id,
            payment.wallet,
            payment.amount.get(),
        )
        .await?;
    }
    let id = match new.id {
        Some(id) => id,
        None => free_id(conn, org_id).await?,
    };
    let row: BillRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into bills (id, org_id, customer_id, number, items, total, bonus_payment, bonus_wallet,
                            created_at)
         values ($1, $2, $3, coalesce($4, $1::text), $5, $6, $7, $8, coalesce($9, now()))
         returning {BILL_COLUMNS}"
    )))
    .bind(id)
    .bind(org_id)
    .bind(new.customer_id)
    .bind(new.number.as_deref().map(str::trim))
    .bind(sqlx::types::Json(&items))
    .bind(total)
    .bind(new.bonus_payment.map_or(Decimal::ZERO, |p| p.amount.get()))
    .bind(new.bonus_payment.map(|p| p.wallet))
    .bind(created_at)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| match violated_constraint(&e) {
        Some("bills_org_id_number_key") => Error::conflict(ConflictCode::BillNumberTaken, "this organization already has a bill with this number"),
        Some("bills_pkey") => Error::conflict(ConflictCode::BillIdTaken, format!("this organization already has a bill with id {id}")),
        _ => e.into(),
    })?;
    views(conn, org_id, zone, share, vec![row])
        .await?
        .pop()
        .ok_or(Error::NotFound("bill"))
}

/// The organization's time zone and the share of a bill bonuses may pay.
async fn program_of(conn: &mut PgConnection, org_id: i64) -> Result<(OrgTimeZone, Percent)> {
    let (zone, share): (String, Decimal) = sqlx::query_as(
        "select time_zone, max_bonus_payment_percentage from organizations where id = $1",
    )
    .bind(org_id)
    .fetch_optional(conn)
    .await?
    .ok_or(Error::NotFound("organization"))?;
    let corrupt = |field: &str| Error::invalid(field, "stored value out of range");
    Ok((
        zone.parse().map_err(|_| corrupt("time_zone"))?,
        Percent::new(share).map_err(|_| corrupt("max_bonus_payment_percentage"))?,
    ))
}

/// Bills as operators see them, each open one with the most its customer may pay with bonuses
/// now (one query for all their customers' wallets).
async fn views(
    conn: &mut PgConnection,
    org_id: i64,
    zone: OrgTimeZone,
    share: Percent,
    rows: Vec<BillRow>,
) -> Result<Vec<Bill>> {
    let mut customers: Vec<i64> = rows
        .iter()
        .filter(|r| r.status == BillStatus::Open)
        .map(|r| r.customer_id)
        .collect();
    customers.sort_unstable();
    customers.dedup();
    let available: std::collections::HashMap<i64, (Decimal, Decimal)> = if customers.is_empty() {
        std::collections::HashMap::new()
    } else {
        sqlx::query_as::<_, (i64, Decimal, Decimal)>(
            "select id, bonuses - bonuses_held, referral_bonuses - referral_bonuses_held
             from customers where org_id = $1 and id = any($2)",
        )
        .bind(org_id)
        .bind(&customers)
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(|(id, main, referral)| (id, (main, referral)))
        .collect()
    };
    rows.into_iter()
        .map(|row| {
            let max = match (row.status, available.get(&row.customer_id)) {
                (BillStatus::Open, Some(&(main, referral))) => {
                    let wallet = row.bonus_wallet.unwrap_or(Wallet::Main);
                    let free = if wallet == Wallet::Referral {
                        referral
                    } else {
                        main
                    };
                    // What this bill itself holds is the customer's to pay on it.
                    let own = if row.bonus_wallet.is_some() {
                        row.bonus_payment
                    } else {
                        Decimal::ZERO
                    };
                    let available = free.checked_add(own).ok_or_else(|| {
                        Error::invalid("bonus_payment", MoneyError::Overflow.to_string())
                    })?;
                    Some(
                        max_bonus_payment(share, row.total, available)
                            .map_err(|e| Error::invalid("total", e.to_string()))?,
                    )
                }
                _ => None,
            };
            Ok(row.view(zone, max))
        })
        .collect()
}

/// The shop's local wall-clock time of a bill, in the organization's zone; a time the clocks skip
/// or show twice (a DST change) is refused rather than guessed.
fn shop_date(text: &str, zone: OrgTimeZone) -> Result<DateTime<Utc>> {
    use chrono::TimeZone;
    let local = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
        .map_err(|_| Error::invalid("date", "must be local time like 2026-02-27 12:38:41"))?;
    zone.0
        .from_local_datetime(&local)
        .single()
        .map(|at| at.with_timezone(&Utc))
        .ok_or_else(|| {
            Error::invalid(
                "date",
                format!("{text} does not exist once in the organization's time zone {zone}"),
            )
        })
}

/// A new bill id no bill of the organization has: shop ids given at creation may lie ahead of
/// the sequence.
async fn free_id(conn: &mut PgConnection, org_id: i64) -> Result<i64> {
    for _ in 0..1000 {
        let id: i64 = sqlx::query_scalar("select nextval(pg_get_serial_sequence('bills', 'id'))")
            .fetch_one(&mut *conn)
            .await?;
        let taken: bool =
            sqlx::query_scalar("select exists (select 1 from bills where org_id = $1 and id = $2)")
                .bind(org_id)
                .bind(id)
                .fetch_one(&mut *conn)
                .await?;
        if !taken {
            return Ok(id);
        }
    }
    Err(Error::conflict(
        ConflictCode::BillIdTaken,
        "no free bill id; give the shop's own id",
    ))
}

async fn hold(
    conn: &mut PgConnection,
    org_id: i64,
    customer_id: i64,
    wallet: Wallet,
    amount: Decimal,
) -> Result<()> {
    let column = held_column(wallet)?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "update customers set {column} = {column} + $3 where org_id = $1 and id = $2"
    )))
    .bind(org_id)
    .bind(customer_id)
    .bind(amount)
    .execute(conn)
    .await
    .map_err(|e| match ledger::insufficient(&e) {
        Some(wallet) => Error::conflict(
            ConflictCode::InsufficientBalance,
            format!("the {wallet} holds less than {amount} once other open bills are counted"),
        ),
        None => e.into(),
    })?;
    Ok(())
}

/// Gives back what a bill held (when it is cancelled, or when its payment is captured).
pub async fn release(
    conn: &mut PgConnection,
    org_id: i64,
    customer_id: i64,
    wallet: Wallet,
    amount: Decimal,
) -> Result<()> {
    let column = held_column(wallet)?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "update customers set {column} = {column} - $3 where org_id = $1 and id = $2"
    )))
    .bind(org_id)
    .bind(customer_id)
    .bind(amount)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn zone_of(conn: &mut PgConnection, org_id: i64) -> Result<OrgTimeZone> {
    let zone: String = sqlx::query_scalar("select time_zone from organizations where id = $1")
        .bind(org_id)
        .fetch_optional(conn)
        .await?
        .ok_or(Error::NotFound("organization"))?;
    zone.parse()
        .map_err(|_| Error::invalid("time_zone", "stored time zone is unknown"))
}

/// The organization's bills, newest first, optionally of one status.
pub async fn list(
    conn: &mut PgConnection,
    org_id: i64,
    status: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<Vec<Bill>> {
    let status = status
        .map(|s| {
            BillStatus::parse(s)
                .ok_or_else(|| Error::invalid("status", "must be open, paid or cancelled"))
        })
        .transpose()?;
    let (zone, share) = program_of(conn, org_id).await?;
    let rows: Vec<BillRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {BILL_COLUMNS} from bills where org_id = $1 and ($2::text is null or status = $2)
         order by created_at desc, id desc limit $3 offset $4"
    )))
    .bind(org_id)
    .bind(status)
    .bind(limit)
    .bind(offset)
    .fetch_all(&mut *conn)
    .await?;
    views(conn, org_id, zone, share, rows).await
}

pub async fn get(conn: &mut PgConnection, org_id: i64, id: i64) -> Result<Bill> {
    let (zone, share) = program_of(conn, org_id).await?;
    let row: BillRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {BILL_COLUMNS} from bills where org_id = $1 and id = $2"
    )))
    .bind(org_id)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(Error::NotFound("bill"))?;
    views(conn, org_id, zone, share, vec![row])
        .await?
        .pop()
        .ok_or(Error::NotFound("bill"))
}

/// The most a bill's customer may pay on it with bonuses, for the register: `None` when the
/// organization lets bonuses pay the whole bill (the old system's answer, unchanged), else as the
/// operators' view computes it ([`Bill::max_bonus_payment`]).
pub async fn pos_max_bonus_payment(
    conn: &mut PgConnection,
    org_id: i64,
    id: i64,
) -> Result<Option<Decimal>> {
    let (_, share) = program_of(conn, org_id).await?;
    if share == Percent::HUNDRED {
        return Ok(None);
    }
    Ok(get(conn, org_id, id).await?.max_bonus_payment)
}

/// Cancels an open bill and releases its hold; a paid bill cannot be cancelled.
///
/// Customers are locked before bills (`crate::locks`): the bill is read unlocked, its customer
/// locked, then the bill changed only if it still belongs to that customer. A merge that moved it
/// in between is a race the caller's retry runs again.
pub async fn cancel(conn: &mut PgConnection, org_id: i64, id: i64) -> Result<Bill> {
    let bill = get(conn, org_id, id).await?;
    crate::customers::lock(conn, org_id, bill.customer_id).await?;
    let cancelled: Option<(Decimal, Option<Wallet>)> = sqlx::query_as(
        "update bills set status = 'cancelled', closed_at = now()
         where org_id = $1 and id = $2 and status = 'open' and customer_id = $3
         returning bonus_payment, bonus_wallet",
    )
    .bind(org_id)
    .bind(id)
    .bind(bill.customer_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((amount, wallet)) = cancelled else {
        let now = get(conn, org_id, id).await?;
        if now.status == BillStatus::Open {
            return Err(Error::conflict(
                ConflictCode::ReceiptRace,
                "the bill moved to another customer; run again",
            ));
        }
        return Err(Error::conflict(
            ConflictCode::BillClosed,
            format!("the bill is {}, not open", now.status),
        ));
    };
    if let Some(wallet) = wallet {
        release(conn, org_id, bill.customer_id, wallet, amount).await?;
    }
    get(conn, org_id, id).await
}

/// A bill as a receipt finds it: locked, with what applying the receipt needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReceiptBill {
    pub org_id: i64,
    pub id: i64,
    pub customer_id: i64,
    pub status: BillStatus,
    /// The bonus payment held while the bill is open.
    pub bonus_payment: Decimal,
    pub bonus_wallet: Option<Wallet>,
    /// The sale receipt that paid it.
    pub paid_by_receipt: Option<String>,
}

/// The bill id a receipt's `extras.billId` names, or why it names none of ours.
pub fn named_bill_id(bill_ref: Option<&str>) -> std::result::Result<i64, String> {
    let bill_ref = bill_ref.ok_or("the receipt names no bill (extras.billId)")?;
    bill_ref
        .parse()
        .map_err(|_| format!("bill {bill_ref:?} is not one of ours"))
}

/// The bills receipts name, each `(organization, extras.billId)`, locked in id order (the
/// program's lock order, `crate::locks`: their customers first). Each is the bill, or the reason
/// it is none of this organization's, in the order asked.
pub async fn lock_named(
    conn: &mut PgConnection,
    named: &[(i64, Option<&str>)],
) -> Result<Vec<std::result::Result<ReceiptBill, String>>> {
    let ids: Vec<std::result::Result<(i64, i64), String>> = named
        .iter()
        .map(|(org, bill_ref)| named_bill_id(*bill_ref).map(|id| (*org, id)))
        .collect();
    let mut keys: Vec<(i64, i64)> = ids.iter().filter_map(|k| k.clone().ok()).collect();
    keys.sort_unstable_by_key(|&(org, id)| (id, org));
    keys.dedup();
    let found: Vec<ReceiptBill> = if keys.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "select b.org_id, b.id, b.customer_id, b.status, b.bonus_payment, b.bonus_wallet, b.paid_by_receipt
             from bills b join unnest($1::bigint[], $2::bigint[]) as k(org_id, id)
               on b.org_id = k.org_id and b.id = k.id
             order by b.id for update of b",
        )
        .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?
    };
    let found: std::collections::HashMap<(i64, i64), ReceiptBill> =
        found.into_iter().map(|b| ((b.org_id, b.id), b)).collect();
    Ok(ids
        .into_iter()
        .map(|key| {
            let (org, id) = key?;
            found
                .get(&(org, id))
                .cloned()
                .ok_or_else(|| format!("no bill {id} in this organization"))
        })
        .collect())
}

/// A bill as the POS protocol shows it, with its customer's name.
#[derive(Debug, sqlx::FromRow)]
pub struct PosBill {
    pub id: i64,
    pub number: String,
    pub created_at: DateTime<Utc>,
    pub total: Decimal,
    pub bonus_payment: Decimal,
    pub items: sqlx::types::Json<Vec<BillItem>>,
    pub customer_id: i64,
    /// The name as stored (first and last name), trailing spaces and all: the bill's
    /// `customer.name`.
    pub customer_name: String,
}

impl PosBill {
    /// The name in the bill list's `customername`, which the registers show trimmed.
    pub fn list_name(&self) -> &str {
        self.customer_name.trim()
    }
}

const POS_BILL: &str =
    "select b.id, b.number, b.created_at, b.total, b.bonus_payment, b.items, b.customer_id,
        concat_ws(' ', nullif(c.first_name, ''), nullif(c.last_name, '')) as customer_name
    from bills b join customers c on c.org_id = b.org_id and c.id = b.customer_id";

/// The open bills the cashier picks from, newest first; with `number`, only that one; with
/// `today`, only those created on the organization's current local day.
pub async fn open_for_pos(
    conn: &mut PgConnection,
    org_id: i64,
    zone: OrgTimeZone,
    number: Option<&str>,
    today: bool,
) -> Result<Vec<PosBill>> {
    let since = today.then(|| {
        let now = Stamp::now_in(zone).0;
        now.date_naive()
            .and_hms_opt(0, 0, 0)
            .and_then(|midnight| midnight.and_local_timezone(*now.offset()).single())
            .map(|m| m.to_utc())
    });
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{POS_BILL} where b.org_id = $1 and b.status = 'open' and ($2::text is null or b.number = $2)
           and ($3::timestamptz is null or b.created_at >= $3)
         order by b.created_at desc, b.id desc limit 500"
    )))
    .bind(org_id)
    .bind(number)
    .bind(since.flatten())
    .fetch_all(conn)
    .await?)
}

/// One open bill for the register; paid, cancelled and other organizations' bills are not found.
pub async fn open_bill_for_pos(conn: &mut PgConnection, org_id: i64, id: i64) -> Result<PosBill> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{POS_BILL} where b.org_id = $1 and b.id = $2 and b.status = 'open'"
    )))
    .bind(org_id)
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or(Error::NotFound("open bill"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Holder {
        #[serde(deserialize_with = "deserialize_id")]
        id: i64,
    }

    #[derive(Debug, Deserialize)]
    struct Optional {
        #[serde(default, deserialize_with = "deserialize_optional_whole")]
        n: Option<i64>,
    }

    #[test]
    fn a_whole_number_may_be_written_as_a_float() {
        let n = |json: &str| serde_json::from_str::<Optional>(json).ok().map(|o| o.n);
        assert_eq!(n(r#"{"n": 249}"#), Some(Some(249)));
        assert_eq!(n(r#"{"n": 249.0}"#), Some(Some(249)));
        assert_eq!(n(r#"{"n": null}"#), Some(None));
        assert_eq!(n("{}"), Some(None));
        assert_eq!(n(r#"{"n": 249.5}"#), None);
        assert_eq!(n(r#"{"n": "249"}"#), None);
    }

    fn id(json: &str) -> Option<i64> {
        serde_json::from_str::<Holder>(&format!(r#"{{"id": {json}}}"#))
            .ok()
            .map(|h| h.id)
    }

    #[test]
    fn a_customer_id_is_a_positive_number_whole_float_or_numeric_string() {
        assert_eq!(id("228"), Some(228));
        assert_eq!(id("228.0"), Some(228));
        assert_eq!(id(r#""228""#), Some(228));
        for refused in ["228.5", "0", "-1", r#""x""#, r#""""#, "1e300", "null"] {
            assert_eq!(id(refused), None, "{refused}");
        }
    }
}
