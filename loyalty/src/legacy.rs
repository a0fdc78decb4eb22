//! The old system's JSON export: the customer shape the API keeps, and import/export of a whole
//! organization. Import keeps history exactly as it was (it never recomputes), checks that every
//! balance equals its history, and is idempotent: the same export imported twice is one organization.
//! An imported organization exports exactly what was imported (key order, number texts, history
//! rows), plus only what happened since.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::error::{Error, Result};
use crate::ledger::{self, EntryKind, EntryRow, HistoryEntry, ImportedEntry, Source, Wallet};
use crate::money::{bounded, deserialize_decimal, parse_decimal, round_money, serialize_decimal};
use crate::orgs::{self, OrgChanges, OrgDetails};
use crate::rules::{BonusProgramSettings, LEGACY_FIELDS, SettingsChanges};
use crate::time::{OrgTimeZone, Stamp};

/// Customer ids are numbers stored as such, and strings in the legacy shape.
pub fn id_as_string<S: Serializer>(id: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

/// A customer in exactly the legacy export's shape.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LegacyCustomer {
    pub id: String,
    pub telegram_id: Option<i64>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub username: Option<String>,
    pub photo_url: Option<String>,
    #[serde(default)]
    pub is_premium: bool,
    pub phone_number: Option<String>,
    /// Seconds since the epoch, with microseconds.
    pub visited_at: Option<f64>,
    /// The local time of the visit, as written when it happened.
    pub visited_at_str: Option<String>,
    #[serde(
        serialize_with = "serialize_decimal",
        deserialize_with = "deserialize_decimal"
    )]
    #[schema(value_type = f64)]
    pub bonuses: Decimal,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    #[serde(
        serialize_with = "serialize_decimal",
        deserialize_with = "deserialize_decimal"
    )]
    #[schema(value_type = f64)]
    pub debts: Decimal,
    #[serde(default)]
    pub debt_history: Vec<HistoryEntry>,
    /// Purchases; imported ones exactly as the old system wrote them.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub invoices: Vec<serde_json::Value>,
    pub referral_code: String,
    pub referred_by: Option<String>,
    #[serde(default)]
    pub referrals: Vec<String>,
    #[serde(default)]
    pub has_been_welcomed: bool,
    #[serde(
        serialize_with = "serialize_decimal",
        deserialize_with = "deserialize_decimal"
    )]
    #[schema(value_type = f64)]
    pub referral_bonuses: Decimal,
    #[serde(default)]
    pub referral_bonus_history: Vec<HistoryEntry>,
    #[serde(default)]
    pub has_made_first_purchase: bool,
    /// All three histories, newest first by the real instant. An imported customer's is kept as
    /// imported (absent when the export had none), with what happened since on top.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combined_history: Option<Vec<HistoryEntry>>,
}

/// A whole export: the organization, its settings and its customers by id, imported customers in
/// the order of the document they came from.
#[derive(Debug, Clone)]
pub struct LegacyExport {
    pub organization_details: OrgDetails,
    pub bonus_program_settings: serde_json::Value,
    pub customers: Vec<LegacyCustomer>,
}

impl Serialize for LegacyExport {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2 + self.customers.len()))?;
        map.serialize_entry("organization_details", &self.organization_details)?;
        map.serialize_entry("bonus_program_settings", &self.bonus_program_settings)?;
        for c in &self.customers {
            map.serialize_entry(&c.id, c)?;
        }
        map.end()
    }
}

#[derive(sqlx::FromRow)]
struct CustomerRow {
    id: i64,
    telegram_id: Option<i64>,
    first_name: Option<String>,
    last_name: Option<String>,
    username: Option<String>,
    photo_url: Option<String>,
    is_premium: bool,
    phone_number: Option<String>,
    visited_at: Option<DateTime<Utc>>,
    visited_at_str: Option<String>,
    legacy_position: Option<i32>,
    legacy_combined_history: Option<String>,
    referred_by: Option<i64>,
    has_been_welcomed: bool,
    has_made_first_purchase: bool,
    // As text: a zero balance keeps its decimals (`0.0`), which the numeric decoding drops.
    bonuses: String,
    referral_bonuses: String,
    debts: String,
}

/// A balance read as text, with the decimals it was written with.
fn balance(text: &str) -> Result<Decimal> {
    parse_decimal(text).map_err(|e| Error::Db(sqlx::Error::Decode(Box::new(e))))
}

#[derive(sqlx::FromRow)]
struct InvoiceRow {
    customer_id: i64,
    invoice_id: String,
    occurred_at: DateTime<Utc>,
    utc_offset_seconds: i32,
    total_amount: Decimal,
    items: serde_json::Value,
    bonuses_deducted: Option<Decimal>,
    bonus_source_used: Option<String>,
    legacy: Option<serde_json::Value>,
    legacy_text: Option<String>,
}

/// Money as the JSON number the legacy format uses.
pub use crate::money::decimal_json as money_json;

impl InvoiceRow {
    fn to_legacy(&self) -> serde_json::Value {
        // As imported, text first: jsonb keeps neither the key order nor `4.0`.
        if let Some(legacy) = self
            .legacy_text
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok())
        {
            return legacy;
        }
        if let Some(legacy) = &self.legacy {
            return legacy.clone();
        }
        let at = Stamp::from_parts(self.occurred_at, self.utc_offset_seconds);
        serde_json::json!({
            "invoice_id": self.invoice_id,
            "date": at.rfc3339(),
            "date_str": at.local_str(),
            "total_amount": money_json(self.total_amount),
            "items": self.items,
            "bonuses_deducted": money_json(self.bonuses_deducted.unwrap_or_default()),
            "bonus_source_used": self.bonus_source_used,
        })
    }
}

/// The epoch seconds of the legacy `visited_at`, exact to the microsecond.
fn epoch_seconds(at: DateTime<Utc>) -> Option<f64> {
    format!("{}.{:06}", at.timestamp(), at.timestamp_subsec_micros())
        .parse()
        .ok()
}

/// What [`CustomerRow`] reads.
const CUSTOMER_COLUMNS: &str =
    "id, telegram_id, first_name, last_name, username, photo_url, is_premium,
    phone_number, visited_at, visited_at_str, legacy_position, legacy_combined_history, referred_by,
    has_been_welcomed, has_made_first_purchase, bonuses::text, referral_bonuses::text, debts::text";

/// Reads the customers (one, or all of the organization) in the legacy shape: imported ones in
/// the order of their export, then the others by id.
pub async fn customers(
    conn: &mut PgConnection,
    org_id: i64,
    zone: OrgTimeZone,
    only: Option<i64>,
) -> Result<Vec<LegacyCustomer>> {
    let rows: Vec<CustomerRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {CUSTOMER_COLUMNS}
         from customers where org_id = $1 and ($2::bigint is null or id = $2)
         order by legacy_position nulls last, id"
    )))
    .bind(org_id)
    .bind(only)
    .fetch_all(&mut *conn)
    .await?;
    if only.is_some() && rows.is_empty() {
        return Err(Error::NotFound("customer"));
    }
    let entries = ledger::entries(conn, org_id, only).await?;
    let invoices: Vec<InvoiceRow> = sqlx::query_as(
        "select customer_id, invoice_id, occurred_at, utc_offset_seconds, total_amount, items,
                bonuses_deducted, bonus_source_used, legacy, legacy_text
         from invoices where org_id = $1 and ($2::bigint is null or customer_id = $2)
         order by customer_id, legacy_position nulls last, occurred_at, invoice_id",
    )
    .bind(org_id)
    .bind(only)
    .fetch_all(&mut *conn)
    .await?;
    let referrals: Vec<(i64, i64)> = sqlx::query_as(
        "select referred_by, id from customers
         where org_id = $1 and referred_by is not null and ($2::bigint is null or referred_by = $2)
         order by referred_by, referral_order, id",
    )
    .bind(org_id)
    .bind(only)
    .fetch_all(&mut *conn)
    .await?;
    // The imported rows of imported customers are in their stored `combined_history` already.
    let imported: HashSet<i64> = sqlx::query_scalar(
        "select e.seq from ledger_entries e
           join customers c on c.org_id = e.org_id and c.id = e.customer_id
         where e.org_id = $1 and ($2::bigint is null or e.customer_id = $2)
           and e.source = 'import' and c.legacy_position is not null",
    )
    .bind(org_id)
    .bind(only)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();

    let mut entries_of: HashMap<i64, Vec<&EntryRow>> = HashMap::new();
    for e in &entries {
        entries_of.entry(e.customer_id).or_default().push(e);
    }
    let mut invoices_of: HashMap<i64, Vec<serde_json::Value>> = HashMap::new();
    for i in &invoices {
        invoices_of
            .entry(i.customer_id)
            .or_default()
            .push(i.to_legacy());
    }
    let mut referrals_of: HashMap<i64, Vec<String>> = HashMap::new();
    for (referrer, friend) in referrals {
        referrals_of
            .entry(referrer)
            .or_default()
            .push(friend.to_string());
    }

    let mut out = Vec::with_capacity(rows.len());
    for c in rows {
        let mine = entries_of.remove(&c.id).unwrap_or_default();
        let combined = combined_history(
            &mine,
            &imported,
            c.legacy_position.is_some(),
            c.legacy_combined_history.as_deref(),
        )?;
        let invoices = invoices_of.remove(&c.id).unwrap_or_default();
        let referrals = referrals_of.remove(&c.id).unwrap_or_default();
        out.push(legacy_customer(
            c, &mine, invoices, referrals, combined, zone,
        )?);
    }
    Ok(out)
}

/// One customer in the legacy shape from its row, its entries (each wallet's in the order
/// written), invoices, referrals and combined history.
fn legacy_customer(
    c: CustomerRow,
    mine: &[&EntryRow],
    invoices: Vec<serde_json::Value>,
    referrals: Vec<String>,
    combined_history: Option<Vec<HistoryEntry>>,
    zone: OrgTimeZone,
) -> Result<LegacyCustomer> {
    let wallet = |w: Wallet| -> Vec<HistoryEntry> {
        mine.iter()
            .filter(|e| e.wallet == w)
            .map(|e| e.to_history())
            .collect()
    };
    Ok(LegacyCustomer {
        id: c.id.to_string(),
        telegram_id: c.telegram_id,
        first_name: c.first_name,
        last_name: c.last_name,
        username: c.username,
        photo_url: c.photo_url,
        is_premium: c.is_premium,
        phone_number: c.phone_number,
        visited_at: c.visited_at.and_then(epoch_seconds),
        visited_at_str: c
            .visited_at_str
            .or_else(|| c.visited_at.map(|at| Stamp::in_zone(at, zone).local_str())),
        bonuses: balance(&c.bonuses)?,
        history: wallet(Wallet::Main),
        debts: balance(&c.debts)?,
        debt_history: wallet(Wallet::Debt),
        invoices,
        referral_code: format!("PROMO{}", c.id),
        referred_by: c.referred_by.map(|r| r.to_string()),
        referrals,
        has_been_welcomed: c.has_been_welcomed,
        referral_bonuses: balance(&c.referral_bonuses)?,
        referral_bonus_history: wallet(Wallet::Referral),
        has_made_first_purchase: c.has_made_first_purchase,
        combined_history,
    })
}

/// The `combined_history` of a customer: computed from the ledger, or for an imported one the
/// imported list as it was with only the entries written since on top.
fn combined_history(
    mine: &[&EntryRow],
    imported: &HashSet<i64>,
    was_imported: bool,
    stored: Option<&str>,
) -> Result<Option<Vec<HistoryEntry>>> {
    if !was_imported {
        return Ok(Some(ledger::combined(mine)));
    }
    let since: Vec<&EntryRow> = mine
        .iter()
        .copied()
        .filter(|e| !imported.contains(&e.seq))
        .collect();
    let Some(stored) = stored else {
        return Ok((!since.is_empty()).then(|| ledger::combined(&since)));
    };
    let mut list = ledger::combined(&since);
    // Stored by the import from the document it checked, so unreadable text is corrupt data.
    let kept: Vec<HistoryEntry> =
        serde_json::from_str(stored).map_err(|e| Error::Db(sqlx::Error::Decode(Box::new(e))))?;
    list.extend(kept);
    Ok(Some(list))
}

/// One customer in the legacy shape.
pub async fn customer(
    conn: &mut PgConnection,
    org_id: i64,
    zone: OrgTimeZone,
    id: i64,
) -> Result<LegacyCustomer> {
    customers(conn, org_id, zone, Some(id))
        .await?
        .pop()
        .ok_or(Error::NotFound("customer"))
}

/// How many of the newest movements and invoices the Mini App's profile carries.
pub const PROFILE_NEWEST: usize = 50;

/// A customer as the Mini App's profile shows them, and where their history goes on.
#[derive(Debug, Clone)]
pub struct Profile {
    /// In the legacy shape, its lists cut to the newest ([`profile`]).
    pub customer: LegacyCustomer,
    /// The `before` of `…/me/history` that goes on after `combined_history`; None when it holds
    /// every movement.
    pub history_next_before: Option<String>,
}

/// One customer in the legacy shape with the newest `newest` movements only: `combined_history`
/// is the newest `newest` (for an imported customer: the newest of what happened since, then the
/// imported list, cut to `newest`), each wallet's history is that wallet's part of the newest
/// `newest` movements (in the order written), `invoices` the newest `newest`. The work follows
/// `newest`, not the customer's history (a regular may have thousands of movements); the rest is
/// read a page at a time from `…/me/history`, starting at `history_next_before`.
pub async fn profile(
    conn: &mut PgConnection,
    org_id: i64,
    zone: OrgTimeZone,
    id: i64,
    newest: usize,
) -> Result<Profile> {
    let c: CustomerRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {CUSTOMER_COLUMNS} from customers where org_id = $1 and id = $2"
    )))
    .bind(org_id)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(Error::NotFound("customer"))?;
    let limit = i64::try_from(newest).unwrap_or(i64::MAX);
    // One more than shown, to know whether there are older ones.
    let mut window = ledger::history_page(conn, org_id, id, None, limit.saturating_add(1)).await?;
    let history_next_before = if window.len() > newest {
        window.truncate(newest);
        window.last().map(ledger::history_cursor)
    } else {
        None
    };
    let combined = if c.legacy_position.is_some() {
        // Imported: the stored list keeps the imported movements; only the others are on top.
        let since: Vec<EntryRow> = sqlx::query_as(
            "select seq, customer_id, wallet, kind, amount, description, transaction_type, occurred_at,
                    utc_offset_seconds, legacy_position
             from ledger_entries
             where org_id = $1 and customer_id = $2 and source <> 'import'
             order by occurred_at desc, seq
             limit $3",
        )
        .bind(org_id)
        .bind(id)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        let since: Vec<&EntryRow> = since.iter().collect();
        combined_history(
            &since,
            &HashSet::new(),
            true,
            c.legacy_combined_history.as_deref(),
        )?
        .map(|mut list| {
            list.truncate(newest);
            list
        })
    } else {
        Some(ledger::combined(&window.iter().collect::<Vec<_>>()))
    };
    let mut written: Vec<&EntryRow> = window.iter().collect();
    written.sort_by_key(|e| (e.legacy_position.is_none(), e.legacy_position, e.seq));
    let invoices: Vec<InvoiceRow> = sqlx::query_as(
        "select customer_id, invoice_id, occurred_at, utc_offset_seconds, total_amount, items,
                bonuses_deducted, bonus_source_used, legacy, legacy_text
         from (select * from invoices where org_id = $1 and customer_id = $2
               order by occurred_at desc, invoice_id desc limit $3) newest
         order by legacy_position nulls last, occurred_at, invoice_id",
    )
    .bind(org_id)
    .bind(id)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let referrals: Vec<String> = sqlx::query_scalar(
        "select id::text from customers where org_id = $1 and referred_by = $2
         order by referral_order, id",
    )
    .bind(org_id)
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let invoices = invoices.iter().map(InvoiceRow::to_legacy).collect();
    Ok(Profile {
        customer: legacy_customer(c, &written, invoices, referrals, combined, zone)?,
        history_next_before,
    })
}

/// The legacy `bonus_program_settings`; the accrual rule appears only where it differs from the
/// old system's last behaviour, so an unchanged organization exports exactly the old keys.
fn settings_json(s: &BonusProgramSettings) -> Result<serde_json::Value> {
    // Stored settings that cannot be written as JSON are stored data we cannot decode.
    s.legacy_json()
        .map_err(|e| Error::Db(sqlx::Error::Decode(Box::new(e))))
}

pub async fn export(conn: &mut PgConnection, org_id: i64) -> Result<LegacyExport> {
    let org = orgs::get(conn, org_id).await?;
    let customers = customers(conn, org_id, org.time_zone, None).await?;
    Ok(LegacyExport {
        organization_details: org.details,
        bonus_program_settings: settings_json(&org.bonus_program_settings)?,
        customers,
    })
}

/// What an import did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ImportOutcome {
    pub id: i64,
    pub customers: usize,
    /// false when this very export had been imported before: nothing was written again.
    pub created: bool,
}

/// Legacy amounts are floats; one was stored as `257.59999999999997`. Such a float artifact is
/// read as the cent it stands for; anything finer than a cent is refused, and so is anything
/// beyond the cap on amounts.
fn legacy_amount(value: Decimal, field: &str) -> Result<Decimal> {
    bounded(value).map_err(|e| Error::invalid(field, e.to_string()))?;
    let cents = round_money(value);
    if (cents - value).abs() > Decimal::new(1, 6) {
        return Err(Error::invalid(
            field,
            format!("{value} is not a whole number of cents"),
        ));
    }
    if cents.is_sign_negative() && !cents.is_zero() {
        return Err(Error::invalid(field, "must not be negative"));
    }
    Ok(cents)
}

struct ImportEntry<'a> {
    wallet: Wallet,
    /// The list it came from (`history`, `debt_history`, `referral_bonus_history`).
    list: &'static str,
    position: usize,
    entry: &'a HistoryEntry,
    at: Stamp,
}

/// Imports a legacy export as a new organization; the same document again returns the first one.
pub async fn import(conn: &mut PgConnection, doc: &serde_json::Value) -> Result<ImportOutcome> {
    let map = doc
        .as_object()
        .ok_or_else(|| Error::invalid("", "must be a JSON object"))?;
    let details: OrgDetails = field(map, "organization_details")?;
    let settings: SettingsChanges = field(map, "bonus_program_settings")?;
    for (name, present) in LEGACY_FIELDS.iter().zip([
        settings.invoice_bonus_percentage.is_some(),
        settings.referral_promo_bonus.is_some(),
        settings.referrer_first_purchase_percentage.is_some(),
    ]) {
        if !present {
            return Err(Error::invalid(
                format!("bonus_program_settings.{name}"),
                "is required",
            ));
        }
    }
    let mut customers = Vec::new();
    let mut combined_texts: HashMap<i64, String> = HashMap::new();
    for (key, value) in map.iter().filter(|(k, _)| {
        !matches!(
            k.as_str(),
            "organization_details" | "bonus_program_settings"
        )
    }) {
        let customer: LegacyCustomer = serde_json::from_value(value.clone())
            .map_err(|e| Error::invalid(key.as_str(), format!("not a legacy customer: {e}")))?;
        let id: i64 = key.parse().ok().filter(|id| *id > 0).ok_or_else(|| {
            Error::invalid(key.as_str(), "customer keys must be positive numeric ids")
        })?;
        if customer.id != *key {
            return Err(Error::invalid(
                format!("{key}.id"),
                "must equal the customer's key",
            ));
        }
        if customer.referral_code != format!("PROMO{id}") {
            return Err(Error::invalid(
                format!("{key}.referral_code"),
                format!("must be PROMO{id}"),
            ));
        }
        if let Some(combined) = value.get("combined_history") {
            let text = serde_json::to_string(combined)
                .map_err(|e| Error::invalid(format!("{key}.combined_history"), e.to_string()))?;
            combined_texts.insert(id, text);
        }
        customers.push((id, customer));
    }

    // A document that cannot be written back cannot be told from another one: refused, never
    // fingerprinted as empty (every such document would then be "the same export").
    // Keys sorted, as before documents kept their order: an export imported before still matches.
    let encoded = serde_json::to_vec(&sorted_keys(doc))
        .map_err(|e| Error::invalid("", format!("cannot be re-encoded: {e}")))?;
    let fingerprint = hex::encode(Sha256::digest(encoded));
    let claimed: Option<i64> = sqlx::query_scalar(
        "insert into organizations (name, legacy_fingerprint) values ($1, $2)
         on conflict (legacy_fingerprint) do nothing returning id",
    )
    .bind(&details.name)
    .bind(&fingerprint)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(org_id) = claimed else {
        let id = sqlx::query_scalar("select id from organizations where legacy_fingerprint = $1")
            .bind(&fingerprint)
            .fetch_one(&mut *conn)
            .await?;
        return Ok(ImportOutcome {
            id,
            customers: customers.len(),
            created: false,
        });
    };
    // The export carries no bot token, so no key is needed.
    orgs::update(
        conn,
        &crate::crypto::TokenKeys::default(),
        org_id,
        &OrgChanges {
            name: Some(details.name.clone()),
            phone_numbers: Some(details.phone_numbers.clone()),
            address: Some(details.address.clone()),
            whatsapp_link: Some(details.whatsapp_link.clone()),
            telegram_link: Some(details.telegram_link.clone()),
            bonus_program_settings: Some(settings),
            ..OrgChanges::default()
        },
    )
    .await
    .map_err(|e| match e {
        Error::Invalid { field, message } if !field.starts_with("bonus_program_settings") => {
            Error::invalid(format!("organization_details.{field}"), message)
        }
        other => other,
    })?;

    for (position, (id, c)) in customers.iter().enumerate() {
        let visited_at = c
            .visited_at
            .map(|secs| {
                let exact = parse_decimal(&secs.to_string())
                    .map_err(|_| Error::invalid(format!("{id}.visited_at"), "not a number"))?;
                let micros = exact
                    .checked_mul(Decimal::from(1_000_000))
                    .ok_or_else(|| Error::invalid(format!("{id}.visited_at"), "out of range"))?
                    .trunc();
                let micros: i64 = micros
                    .try_into()
                    .map_err(|_| Error::invalid(format!("{id}.visited_at"), "out of range"))?;
                DateTime::<Utc>::from_timestamp_micros(micros)
                    .ok_or_else(|| Error::invalid(format!("{id}.visited_at"), "out of range"))
            })
            .transpose()?;
        sqlx::query(
            "insert into customers (org_id, id, telegram_id, first_name, last_name, username, photo_url,
                                    is_premium, phone_number, visited_at, has_been_welcomed,
                                    has_made_first_purchase, visited_at_str, legacy_position,
                                    legacy_combined_history)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(org_id)
        .bind(id)
        .bind(c.telegram_id)
        .bind(&c.first_name)
        .bind(&c.last_name)
        .bind(&c.username)
        .bind(&c.photo_url)
        .bind(c.is_premium)
        .bind(&c.phone_number)
        .bind(visited_at)
        .bind(c.has_been_welcomed)
        .bind(c.has_made_first_purchase)
        .bind(&c.visited_at_str)
        .bind(i32::try_from(position).unwrap_or(i32::MAX))
        .bind(combined_texts.get(id))
        .execute(&mut *conn)
        .await
        .map_err(|e| match crate::error::violated_constraint(&e) {
            Some("customers_telegram") => Error::invalid(format!("{id}.telegram_id"), "another customer has the same telegram_id"),
            _ => e.into(),
        })?;
    }

    link_referrals(conn, org_id, &customers).await?;
    for (id, c) in &customers {
        import_history(conn, org_id, *id, c).await?;
        import_invoices(conn, org_id, *id, c).await?;
    }
    open_imported_lots(conn, org_id).await?;
    Ok(ImportOutcome {
        id: org_id,
        customers: customers.len(),
        created: true,
    })
}

/// Each imported bonus balance becomes one lot (per customer and bonus wallet), spendable now and
/// never expiring: the old system kept no lots, and an operator decides whether they expire.
async fn open_imported_lots(conn: &mut PgConnection, org_id: i64) -> Result<()> {
    let balances: Vec<(i64, Decimal, Decimal)> = sqlx::query_as(
        "select id, bonuses, referral_bonuses from customers
         where org_id = $1 and (bonuses > 0 or referral_bonuses > 0) order by id",
    )
    .bind(org_id)
    .fetch_all(&mut *conn)
    .await?;
    let now = Utc::now();
    let lots: Vec<crate::lots::NewLot> = balances
        .iter()
        .flat_map(|&(customer_id, bonuses, referral)| {
            [(Wallet::Main, bonuses), (Wallet::Referral, referral)]
                .into_iter()
                .filter(|(_, amount)| *amount > Decimal::ZERO)
                .map(move |(wallet, amount)| crate::lots::NewLot {
                    org_id,
                    customer_id,
                    wallet,
                    amount,
                    pending: false,
                    activates_at: now,
                    expires_at: None,
                    source: Source::Import,
                    source_ref: None,
                    invoice_id: None,
                })
        })
        .collect();
    crate::lots::open(conn, &lots).await?;
    Ok(())
}

/// The document with every object's keys in sorted order (the fingerprint's canonical form).
fn sorted_keys(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let sorted: BTreeMap<&String, serde_json::Value> =
                map.iter().map(|(k, v)| (k, sorted_keys(v))).collect();
            serde_json::Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(sorted_keys).collect())
        }
        other => other.clone(),
    }
}

fn field<T: serde::de::DeserializeOwned>(
    map: &serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Result<T> {
    let value = map
        .get(key)
        .cloned()
        .ok_or_else(|| Error::invalid(key, "is required"))?;
    serde_json::from_value(value).map_err(|e| Error::invalid(key, e.to_string()))
}

/// Sets `referred_by` from each referrer's `referrals`, in their order, and refuses an export where
/// the two sides disagree.
async fn link_referrals(
    conn: &mut PgConnection,
    org_id: i64,
    customers: &[(i64, LegacyCustomer)],
) -> Result<()> {
    let by_id: HashMap<i64, &LegacyCustomer> = customers.iter().map(|(id, c)| (*id, c)).collect();
    for (id, c) in customers {
        if let Some(referrer) = &c.referred_by {
            let listed = referrer
                .parse::<i64>()
                .ok()
                .and_then(|r| by_id.get(&r))
                .is_some_and(|r| r.referrals.contains(&id.to_string()));
            if !listed {
                return Err(Error::invalid(
                    format!("{id}.referred_by"),
                    format!(
                        "customer {referrer} is not in the export or does not list {id} in its referrals"
                    ),
                ));
            }
        }
        for friend in &c.referrals {
            let consistent = friend
                .parse::<i64>()
                .ok()
                .and_then(|f| by_id.get(&f))
                .is_some_and(|f| f.referred_by.as_deref() == Some(&id.to_string()));
            if !consistent {
                return Err(Error::invalid(
                    format!("{id}.referrals"),
                    format!("customer {friend} is not in the export or was not referred by {id}"),
                ));
            }
            sqlx::query(
                "update customers set referred_by = $3, referral_order = nextval('referral_order')
                 where org_id = $1 and id = $2",
            )
            .bind(org_id)
            .bind(friend.parse::<i64>().unwrap_or_default())
            .bind(id)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// Writes the three histories in the order of their real instants (the order the balances moved
/// in), so the database's refusal of a negative wallet checks the history as it happened; each
/// entry remembers its place in its list for the export.
async fn import_history(
    conn: &mut PgConnection,
    org_id: i64,
    id: i64,
    c: &LegacyCustomer,
) -> Result<()> {
    let mut all = Vec::new();
    for (wallet, list, name) in [
        (Wallet::Main, &c.history, "history"),
        (Wallet::Debt, &c.debt_history, "debt_history"),
        (
            Wallet::Referral,
            &c.referral_bonus_history,
            "referral_bonus_history",
        ),
    ] {
        for (position, entry) in list.iter().enumerate() {
            let at = Stamp::parse_rfc3339(&entry.date).map_err(|e| {
                Error::invalid(
                    format!("{id}.{name}[{position}].date"),
                    format!("not an RFC 3339 date: {e}"),
                )
            })?;
            all.push(ImportEntry {
                wallet,
                list: name,
                position,
                entry,
                at,
            });
        }
    }
    all.sort_by_key(|e| e.at.utc());
    for e in &all {
        let path = format!("{id}.{}[{}]", e.list, e.position);
        let kind = EntryKind::parse(&e.entry.kind)
            .filter(|k| *k == EntryKind::Accrual || *k == EntryKind::outgoing(e.wallet))
            .ok_or_else(|| {
                Error::invalid(
                    format!("{path}.type"),
                    format!("{:?} is not a movement of this wallet", e.entry.kind),
                )
            })?;
        let amount = legacy_amount(e.entry.amount, &format!("{path}.amount"))?;
        let entry = ImportedEntry {
            org_id,
            customer_id: id,
            wallet: e.wallet,
            kind,
            amount,
            description: &e.entry.description,
            transaction_type: e.entry.transaction_type.as_deref(),
            at: e.at,
            legacy_position: i32::try_from(e.position).unwrap_or(i32::MAX),
        };
        ledger::post_imported(conn, &entry).await.map_err(|err| {
            match ledger::insufficient(&err) {
                Some(wallet) => Error::invalid(
                    path.clone(),
                    format!(
                        "the {wallet} of customer {id} would go below zero at {}",
                        e.entry.date
                    ),
                ),
                None => err.into(),
            }
        })?;
    }
    let (bonuses, referral, debts): (Decimal, Decimal, Decimal) = sqlx::query_as(
        "select bonuses, referral_bonuses, debts from customers where org_id = $1 and id = $2",
    )
    .bind(org_id)
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    for (name, stored, declared) in [
        ("bonuses", bonuses, c.bonuses),
        ("referral_bonuses", referral, c.referral_bonuses),
        ("debts", debts, c.debts),
    ] {
        let declared = legacy_amount(declared, &format!("{id}.{name}"))?;
        if stored != declared {
            return Err(Error::invalid(
                format!("{id}.{name}"),
                format!("customer {id}: {name} is {declared} but its history adds up to {stored}"),
            ));
        }
    }
    Ok(())
}

async fn import_invoices(
    conn: &mut PgConnection,
    org_id: i64,
    id: i64,
    c: &LegacyCustomer,
) -> Result<()> {
    for (position, invoice) in c.invoices.iter().enumerate() {
        let path = format!("{id}.invoices[{position}]");
        let text = |key: &str| {
            invoice
                .get(key)
                .and_then(|v| v.as_str())
                .ok_or_else(|| Error::invalid(format!("{path}.{key}"), "is required"))
        };
        let invoice_id = text("invoice_id")?;
        let at = Stamp::parse_rfc3339(text("date")?)
            .map_err(|e| Error::invalid(format!("{path}.date"), e.to_string()))?;
        let amount = |key: &str| -> Result<Option<Decimal>> {
            match invoice.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => deserialize_decimal(v.clone())
                    .map(Some)
                    .map_err(|e| Error::invalid(format!("{path}.{key}"), e.to_string())),
            }
        };
        let total = amount("total_amount")?
            .ok_or_else(|| Error::invalid(format!("{path}.total_amount"), "is required"))?;
        let source = invoice
            .get("bonus_source_used")
            .or_else(|| invoice.get("bonus_type_deducted"))
            .and_then(|v| v.as_str());
        sqlx::query(
            "insert into invoices (org_id, invoice_id, customer_id, occurred_at, utc_offset_seconds, total_amount,
                                   items, bonuses_deducted, bonus_source_used, legacy, legacy_position,
                                   legacy_text)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(org_id)
        .bind(invoice_id)
        .bind(id)
        .bind(at.utc())
        .bind(at.offset_seconds())
        .bind(legacy_amount(total, &format!("{path}.total_amount"))?)
        .bind(invoice.get("items").cloned().unwrap_or(serde_json::Value::Array(vec![])))
        .bind(
            amount("bonuses_deducted")?
                .map(|v| {
                    bounded(v).map(round_money).map_err(|e| {
                        Error::invalid(format!("{path}.bonuses_deducted"), e.to_string())
                    })
                })
                .transpose()?,
        )
        .bind(source)
        .bind(invoice)
        .bind(i32::try_from(position).unwrap_or(i32::MAX))
        .bind(
            serde_json::to_string(invoice)
                .map_err(|e| Error::invalid(path.clone(), e.to_string()))?,
        )
        .execute(&mut *conn)
        .await
        .map_err(|e| match crate::error::violated_constraint(&e) {
            Some("invoices_pkey") => Error::invalid(format!("{path}.invoice_id"), format!("invoice {invoice_id} appears twice")),
            _ => e.into(),
        })?;
    }
    Ok(())
}
