//! The bonus rules, as pure functions over `Decimal`: every amount the program can produce is
//! decided here. Each function takes everything it needs and returns every effect; storage
//! (`receipts`, `customers`) only applies what they return.
//!
//! - [`sale_effects`] / [`batch_sale_effects`]: a sale's captured bonus payment, its accrual, and
//!   the referrer's reward for a first purchase (counted once per customer, even within a batch);
//! - [`refund_effects`]: what a refund gives back, takes back, and cannot take (the shortfall);
//! - [`promo_effects`]: the bonus for entering a friend's promo code, and when it is refused;
//! - under them, [`purchase_accrual`], [`referral_reward`] and [`refund_share`].

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::error::{ConflictCode, Error};
use crate::ledger::{ReceiptMovements, Wallet};
use crate::money::{Amount, MoneyError, round_money};

pub mod lots;
pub mod schedule;
mod settings;
pub mod share;
pub mod tiers;
pub use lots::LotBalance;
pub use settings::*;

/// Bonuses a purchase of `total` earns when `paid_with_bonuses` of it was paid from a wallet, for
/// a customer who had spent `spent_before` before it (their tier's percentage, [`tiers`]).
/// Every rule is checked arithmetic: an amount beyond range is an error, never a panic.
pub fn purchase_accrual(
    settings: &BonusProgramSettings,
    total: Decimal,
    paid_with_bonuses: Decimal,
    spent_before: Decimal,
) -> Result<Decimal, MoneyError> {
    let base = match settings.accrual_base {
        AccrualBase::Total => total,
        AccrualBase::NothingWhenPaidWithBonuses if paid_with_bonuses > Decimal::ZERO => {
            return Ok(Decimal::ZERO);
        }
        AccrualBase::NothingWhenPaidWithBonuses => total,
        AccrualBase::MoneyPaid => total
            .checked_sub(paid_with_bonuses)
            .ok_or(MoneyError::Overflow)?
            .max(Decimal::ZERO),
    };
    tiers::accrual_percentage(settings, spent_before).of(base)
}

/// When a credit becomes spendable and when it expires, as its lot records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LotTiming {
    /// In the pending wallet until `activates_at`.
    pub pending: bool,
    pub activates_at: DateTime<Utc>,
    /// `None`: never expires.
    pub expires_at: Option<DateTime<Utc>>,
}

/// The lot of a credit made at `at`: a purchase accrual or a referral reward (`delayed`) waits
/// `accrual_delay_days` in the pending wallet; every credit expires `bonus_lifetime_days` after it
/// became spendable (never without a lifetime).
pub fn credit_timing(
    settings: &BonusProgramSettings,
    at: DateTime<Utc>,
    delayed: bool,
) -> Result<LotTiming, MoneyError> {
    let delay = if delayed {
        settings.accrual_delay_days
    } else {
        0
    };
    let activates_at = lots::activates_at(at, delay)?;
    Ok(LotTiming {
        pending: delay > 0,
        activates_at,
        expires_at: lots::expires_at(activates_at, settings.bonus_lifetime_days)?,
    })
}

/// What taking back `amount` of a sale's accrual takes from each lot: from the sale's own lot
/// (`own`) first, then from the others as spending does (soonest expiry first). The second value
/// is what the lots could not cover.
pub fn take_back_from_lots(
    own: Option<i64>,
    lots: &[LotBalance],
    amount: Decimal,
) -> Result<(Vec<(i64, Decimal)>, Decimal), MoneyError> {
    let (first, others): (Vec<LotBalance>, Vec<LotBalance>) =
        lots.iter().partition(|l| Some(l.id) == own);
    let (mut taken, rest) = lots::spend(&first, amount)?;
    let (more, short) = lots::spend(&others, rest)?;
    taken.extend(more);
    Ok((taken, short))
}

/// What the referrer earns from a friend's purchase: only the first one counts.
pub fn referral_reward(
    settings: &BonusProgramSettings,
    total: Decimal,
    first_purchase: bool,
) -> Result<Decimal, MoneyError> {
    if !first_purchase {
        return Ok(Decimal::ZERO);
    }
    settings.referrer_first_purchase_percentage.of(total)
}

/// The part of `original` (an accrual, or bonuses spent) that a refund gives back, when the sale of
/// `sale_total` has now been refunded `refunded_total` in all (this refund included) and
/// `already_reversed` was given back by earlier refunds. Computing from the cumulative share keeps
/// several partial refunds from drifting by a cent, and never reverses more than the original.
pub fn refund_share(
    original: Decimal,
    sale_total: Decimal,
    refunded_total: Decimal,
    already_reversed: Decimal,
) -> Result<Decimal, MoneyError> {
    if sale_total <= Decimal::ZERO || original <= Decimal::ZERO {
        return Ok(Decimal::ZERO);
    }
    let share = refunded_total
        .min(sale_total)
        .checked_div(sale_total)
        .ok_or(MoneyError::Overflow)?;
    let due = round_money(original.checked_mul(share).ok_or(MoneyError::Overflow)?).min(original);
    let left = due
        .checked_sub(already_reversed)
        .ok_or(MoneyError::Overflow)?;
    Ok(left.max(Decimal::ZERO))
}

/// A sale as the rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sale {
    /// The receipt's total, positive.
    pub total: Decimal,
    /// The bonus payment the bill held, and the wallet it is held in.
    pub hold: Option<(Wallet, Decimal)>,
}

/// What the sale rules need to know of the buyer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Buyer {
    pub has_made_first_purchase: bool,
    /// The friend whose promo code the buyer entered.
    pub referred_by: Option<i64>,
    /// The money spent before this sale (sales less refunds): what the tier is reached by.
    pub spent_total: Decimal,
}

/// A referrer's reward for a friend's first purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Referral {
    pub referrer: i64,
    pub amount: Decimal,
}

/// Everything a sale does to the wallets. Each amount is exactly as the rule computed it (what
/// notifications show) and is an entry's amount: `None` means no entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleEffects {
    /// The bill's held bonus payment, captured from its wallet.
    pub payment: Option<(Wallet, Decimal)>,
    /// Bonuses the purchase earns, into the main wallet.
    pub accrual: Option<Decimal>,
    /// This is the buyer's first purchase: from now on they have made one.
    pub first_purchase: bool,
    /// The referrer's reward, when this first purchase has a referrer and earns one.
    pub referral: Option<Referral>,
    /// What the buyer has spent after this sale.
    pub spent_after: Decimal,
    /// The higher tier this sale makes the buyer reach, for the message.
    pub tier_reached: Option<Tier>,
}

/// `amount` when it can be a ledger entry's (above zero), else `None`.
fn entry(amount: Decimal) -> Option<Decimal> {
    Amount::new(amount).ok().map(|_| amount)
}

/// What one sale does, for a buyer in the state `buyer`.
pub fn sale_effects(
    settings: &BonusProgramSettings,
    sale: &Sale,
    buyer: &Buyer,
) -> Result<SaleEffects, MoneyError> {
    let payment = sale
        .hold
        .and_then(|(wallet, held)| Some((wallet, entry(held)?)));
    let paid = payment.map_or(Decimal::ZERO, |(_, amount)| amount);
    let accrual = entry(purchase_accrual(
        settings,
        sale.total,
        paid,
        buyer.spent_total,
    )?);
    let spent_after = buyer
        .spent_total
        .checked_add(sale.total)
        .ok_or(MoneyError::Overflow)?;
    let tier_reached = tiers::newly_reached(settings, buyer.spent_total, spent_after).cloned();
    let first_purchase = !buyer.has_made_first_purchase;
    let referral = if first_purchase {
        let reward = referral_reward(settings, sale.total, true)?;
        buyer
            .referred_by
            .zip(entry(reward))
            .map(|(referrer, amount)| Referral { referrer, amount })
    } else {
        None
    };
    Ok(SaleEffects {
        payment,
        accrual,
        first_purchase,
        referral,
        spent_after,
        tier_reached,
    })
}

/// One sale of a batch: `buyer_key` tells the batch's buyers apart.
#[derive(Debug, Clone, Copy)]
pub struct BatchSale<'a, K> {
    pub buyer_key: K,
    pub settings: &'a BonusProgramSettings,
    pub sale: Sale,
    /// The buyer as stored before the batch.
    pub buyer: Buyer,
}

/// What sales applied together, in order, do: a buyer's first purchase is their first sale in the
/// batch, so two receipts of one customer in one batch reward the referrer once; and a buyer's
/// second sale of the batch sees the money the first one spent (its tier).
pub fn batch_sale_effects<K: Eq + Hash + Copy>(
    sales: &[BatchSale<'_, K>],
) -> Result<Vec<SaleEffects>, MoneyError> {
    let mut bought = HashSet::new();
    let mut spent: HashMap<K, Decimal> = HashMap::new();
    sales
        .iter()
        .map(|s| {
            let buyer = Buyer {
                has_made_first_purchase: s.buyer.has_made_first_purchase
                    || !bought.insert(s.buyer_key),
                spent_total: spent
                    .get(&s.buyer_key)
                    .copied()
                    .unwrap_or(s.buyer.spent_total),
                ..s.buyer
            };
            let effects = sale_effects(s.settings, &s.sale, &buyer)?;
            spent.insert(s.buyer_key, effects.spent_after);
            Ok(effects)
        })
        .collect()
}

/// The amount a refund receipt refunds, whichever sign it came with; `None` when it is zero.
pub fn refund_amount(receipt_total: Decimal) -> Option<Decimal> {
    entry(receipt_total.abs())
}

/// What earlier refunds of the same sale did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RefundedBefore {
    pub refunded: Decimal,
    pub accrual_reversed: Decimal,
    pub payment_returned: Decimal,
}

/// Everything a refund does to the wallets; amounts as in [`SaleEffects`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefundEffects {
    /// The refunded share of the sale's bonus payment, back to the wallet it came from.
    pub given_back: Option<(Wallet, Decimal)>,
    /// The refunded share of the sale's accrual: what is due back.
    pub accrual_due: Decimal,
    /// What is taken back of it, out of `taken_from`.
    pub taken_back: Option<Decimal>,
    /// The wallet the accrual is taken back from: the pending wallet while the sale's accrual is
    /// still pending, else the main wallet.
    pub taken_from: Wallet,
    /// What is due but was already spent: not taken, recorded.
    pub shortfall: Decimal,
    /// What the buyer's money spent (their tier's measure) goes down by: the refunded amount, but
    /// never more of the sale than was not refunded before.
    pub spent_lowered: Decimal,
}

impl RefundEffects {
    pub fn payment_returned(&self) -> Decimal {
        self.given_back.map_or(Decimal::ZERO, |(_, back)| back)
    }
    pub fn accrual_taken(&self) -> Decimal {
        self.taken_back.unwrap_or(Decimal::ZERO)
    }
}

/// What a refund of `refunded` does to a sale of `sale_total` that moved the wallets as
/// `sale_moved`, after the refunds `before`, when the buyer's main wallet has `available` (less
/// what open bills hold). Both reversals are shares of the cumulative refunded amount (see
/// [`refund_share`]); the accrual is taken back only as far as the wallet, with what this refund
/// gives back to it, holds: it never goes below zero, and the rest is the shortfall.
///
/// While the sale's accrual is still pending (`accrual_pending`), `available` is what its pending
/// lot still holds: the refunded share is cancelled from the pending wallet, where nothing can
/// have spent it (no shortfall), and the payment given back does not count towards it.
pub fn refund_effects(
    sale_total: Decimal,
    sale_moved: &ReceiptMovements,
    before: &RefundedBefore,
    refunded: Decimal,
    available: Decimal,
    accrual_pending: bool,
) -> Result<RefundEffects, MoneyError> {
    let refunded_total = before
        .refunded
        .checked_add(refunded)
        .ok_or(MoneyError::Overflow)?;
    let given_back = match sale_moved.paid {
        Some((wallet, paid)) => {
            let share = refund_share(paid, sale_total, refunded_total, before.payment_returned)?;
            entry(share).map(|back| (wallet, back))
        }
        None => None,
    };
    let accrual_due = refund_share(
        sale_moved.accrued,
        sale_total,
        refunded_total,
        before.accrual_reversed,
    )?;
    let available = match given_back {
        Some((Wallet::Main, back)) if !accrual_pending => {
            available.checked_add(back).ok_or(MoneyError::Overflow)?
        }
        _ => available,
    };
    let taken = accrual_due.min(available.max(Decimal::ZERO));
    Ok(RefundEffects {
        given_back,
        accrual_due,
        taken_back: entry(taken),
        taken_from: if accrual_pending {
            Wallet::Pending
        } else {
            Wallet::Main
        },
        shortfall: accrual_due.checked_sub(taken).ok_or(MoneyError::Overflow)?,
        spent_lowered: refunded.max(Decimal::ZERO).min(
            sale_total
                .checked_sub(before.refunded)
                .ok_or(MoneyError::Overflow)?
                .max(Decimal::ZERO),
        ),
    })
}

/// What the promo rules need to know of the customer entering a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PromoState {
    pub referred_by: Option<i64>,
    pub has_made_first_purchase: bool,
}

/// What entering a friend's promo code does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromoEffects {
    /// The friend who becomes the customer's referrer.
    pub referrer: i64,
    /// The bonus credited to the customer's main wallet.
    pub bonus: Option<Amount>,
}

/// Customer `customer_id` in `state` enters a code naming `referrer` (`None`: not a promo code).
/// Refused for an unknown code, the customer's own code, a customer already referred, and after
/// the first purchase. (That the referrer exists and was not referred by this customer is for
/// storage to check before applying.)
pub fn promo_effects(
    settings: &BonusProgramSettings,
    customer_id: i64,
    referrer: Option<i64>,
    state: &PromoState,
) -> Result<PromoEffects, Error> {
    let referrer = referrer.ok_or_else(unknown_promo_code)?;
    if referrer == customer_id {
        return Err(Error::invalid(
            "code",
            "this is the customer's own promo code",
        ));
    }
    if state.referred_by.is_some() {
        return Err(Error::conflict(
            ConflictCode::AlreadyReferred,
            "the customer has already entered a friend's promo code",
        ));
    }
    if state.has_made_first_purchase {
        return Err(Error::conflict(
            ConflictCode::AfterFirstPurchase,
            "a promo code can only be entered before the first purchase",
        ));
    }
    Ok(PromoEffects {
        referrer,
        bonus: Amount::new(settings.referral_promo_bonus.get()).ok(),
    })
}

/// The refusal of a code that names no customer of the organization.
pub fn unknown_promo_code() -> Error {
    Error::invalid(
        "code",
        "no customer of this organization has this promo code",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::{Money, Percent};
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).expect("decimal literal")
    }

    fn legacy(accrue_when_paying: bool) -> BonusProgramSettings {
        BonusProgramSettings {
            invoice_bonus_percentage: Percent::from_str("2").expect("valid"),
            referral_promo_bonus: Money::from_str("50").expect("valid"),
            referrer_first_purchase_percentage: Percent::from_str("5").expect("valid"),
            accrual_base: if accrue_when_paying {
                AccrualBase::Total
            } else {
                AccrualBase::NothingWhenPaidWithBonuses
            },
            ..BonusProgramSettings::default()
        }
    }

    #[test]
    fn a_purchase_earns_its_percentage() {
        let settings = legacy(false);
        assert_eq!(
            purchase_accrual(&settings, d("11118"), Decimal::ZERO, Decimal::ZERO),
            Ok(d("222.36"))
        );
        assert_eq!(
            purchase_accrual(&settings, d("80"), Decimal::ZERO, Decimal::ZERO),
            Ok(d("1.6"))
        );
    }

    #[test]
    fn paying_with_bonuses_earns_nothing_under_the_last_legacy_rule() {
        assert_eq!(
            purchase_accrual(&legacy(false), d("10000"), d("400"), Decimal::ZERO),
            Ok(Decimal::ZERO)
        );
    }

    #[test]
    fn paying_with_bonuses_earns_on_the_full_amount_under_the_earlier_rule() {
        // Invoice 9B6E3C60: 10000 with 200 paid by bonuses earned 200.
        assert_eq!(
            purchase_accrual(&legacy(true), d("10000"), d("200"), Decimal::ZERO),
            Ok(d("200"))
        );
    }

    #[test]
    fn only_the_first_purchase_rewards_the_referrer() {
        assert_eq!(
            referral_reward(&legacy(false), d("1000"), true),
            Ok(d("50"))
        );
        assert_eq!(
            referral_reward(&legacy(false), d("1000"), false),
            Ok(Decimal::ZERO)
        );
    }

    #[test]
    fn amounts_beyond_range_are_an_overflow_error_never_a_panic() {
        let huge = d("70000000000000000000000000000");
        assert_eq!(
            purchase_accrual(&legacy(false), huge, Decimal::ZERO, Decimal::ZERO),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            referral_reward(&legacy(false), huge, true),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            refund_share(huge, d("0.01"), d("0.01"), -huge),
            Err(MoneyError::Overflow)
        );
    }

    #[test]
    fn refunds_give_back_in_proportion_and_never_more_than_the_original() {
        let share = |original, total, refunded, before| {
            refund_share(d(original), d(total), d(refunded), before).expect("in range")
        };
        assert_eq!(share("200", "10000", "10000", Decimal::ZERO), d("200"));
        assert_eq!(share("200", "10000", "2500", Decimal::ZERO), d("50"));
        // Three thirds refunded one by one add up to exactly the original.
        let first = share("1", "3", "1", Decimal::ZERO);
        let second = share("1", "3", "2", first);
        let third = share("1", "3", "3", first + second);
        assert_eq!((first, second, third), (d("0.33"), d("0.34"), d("0.33")));
        assert_eq!(first + second + third, d("1"));
        // Refunding more than was sold stops at the original.
        assert_eq!(share("200", "10000", "20000", d("200")), Decimal::ZERO);
    }

    fn percent(p: &str) -> Percent {
        Percent::from_str(p).expect("valid")
    }

    fn amount(a: &str) -> Amount {
        Amount::from_str(a).expect("valid")
    }

    fn settings(invoice: &str, referrer: &str) -> BonusProgramSettings {
        BonusProgramSettings {
            invoice_bonus_percentage: percent(invoice),
            referral_promo_bonus: Money::from_str("50").expect("valid"),
            referrer_first_purchase_percentage: percent(referrer),
            ..BonusProgramSettings::default()
        }
    }

    fn sale(total: &str) -> Sale {
        Sale {
            total: d(total),
            hold: None,
        }
    }

    const NEW_FRIEND: Buyer = Buyer {
        has_made_first_purchase: false,
        referred_by: Some(7),
        spent_total: Decimal::ZERO,
    };

    #[test]
    fn a_first_purchase_accrues_and_rewards_the_referrer() {
        let effects = sale_effects(&legacy(false), &sale("1000"), &NEW_FRIEND).expect("in range");
        assert_eq!(
            effects,
            SaleEffects {
                payment: None,
                accrual: Some(d("20")),
                first_purchase: true,
                referral: Some(Referral {
                    referrer: 7,
                    amount: d("50"),
                }),
                spent_after: d("1000"),
                tier_reached: None,
            }
        );
    }

    #[test]
    fn a_later_purchase_accrues_but_rewards_no_referrer() {
        let buyer = Buyer {
            has_made_first_purchase: true,
            ..NEW_FRIEND
        };
        let effects = sale_effects(&legacy(false), &sale("1000"), &buyer).expect("in range");
        assert_eq!(effects.accrual, Some(d("20")));
        assert!(!effects.first_purchase);
        assert_eq!(effects.referral, None);
    }

    #[test]
    fn a_first_purchase_without_a_referrer_is_recorded_and_rewards_nobody() {
        let effects =
            sale_effects(&legacy(false), &sale("1000"), &Buyer::default()).expect("in range");
        assert!(effects.first_purchase);
        assert_eq!(effects.referral, None);
    }

    #[test]
    fn a_held_bonus_payment_is_captured_and_earns_nothing_under_the_last_legacy_rule() {
        let paid = Sale {
            total: d("10000"),
            hold: Some((Wallet::Referral, d("400"))),
        };
        let effects = sale_effects(&legacy(false), &paid, &Buyer::default()).expect("in range");
        assert_eq!(effects.payment, Some((Wallet::Referral, d("400"))));
        assert_eq!(effects.accrual, None);
    }

    #[test]
    fn a_held_bonus_payment_earns_on_the_full_amount_under_the_earlier_rule() {
        let paid = Sale {
            total: d("10000"),
            hold: Some((Wallet::Main, d("200"))),
        };
        let effects = sale_effects(&legacy(true), &paid, &Buyer::default()).expect("in range");
        assert_eq!(effects.payment, Some((Wallet::Main, d("200"))));
        assert_eq!(effects.accrual, Some(d("200")));
    }

    #[test]
    fn a_zero_hold_is_no_payment() {
        let held_nothing = Sale {
            total: d("100"),
            hold: Some((Wallet::Main, Decimal::ZERO)),
        };
        let effects =
            sale_effects(&legacy(false), &held_nothing, &Buyer::default()).expect("in range");
        assert_eq!(effects.payment, None);
        assert_eq!(effects.accrual, Some(d("2")), "no payment: it earns");
    }

    #[test]
    fn zero_percent_settings_produce_no_amounts() {
        let nothing = settings("0", "0");
        let effects = sale_effects(&nothing, &sale("1000"), &NEW_FRIEND).expect("in range");
        assert_eq!(effects.accrual, None);
        assert_eq!(effects.referral, None);
        assert!(effects.first_purchase, "the first purchase still counts");
    }

    #[test]
    fn half_a_cent_rounds_up_and_less_rounds_to_nothing() {
        let one = settings("1", "1");
        // 1 % of 0.50 is 0.005: a cent.
        let effects = sale_effects(&one, &sale("0.5"), &NEW_FRIEND).expect("in range");
        assert_eq!(effects.accrual, Some(d("0.01")));
        assert_eq!(effects.referral.map(|r| r.amount), Some(d("0.01")));
        // 1 % of 0.49 is 0.0049: nothing, and no entry of zero.
        let effects = sale_effects(&one, &sale("0.49"), &NEW_FRIEND).expect("in range");
        assert_eq!(
            purchase_accrual(&one, d("0.49"), Decimal::ZERO, Decimal::ZERO),
            Ok(d("0.00"))
        );
        assert_eq!(effects.accrual, None);
        assert_eq!(effects.referral, None);
    }

    #[test]
    fn two_receipts_of_one_customer_in_one_batch_reward_the_referrer_once() {
        let program = legacy(false);
        let of = |buyer_key: i64| BatchSale {
            buyer_key,
            settings: &program,
            sale: sale("1000"),
            buyer: NEW_FRIEND,
        };
        let effects = batch_sale_effects(&[of(1), of(2), of(1)]).expect("in range");
        let rewarded: Vec<bool> = effects.iter().map(|e| e.referral.is_some()).collect();
        assert_eq!(rewarded, [true, true, false]);
        let first: Vec<bool> = effects.iter().map(|e| e.first_purchase).collect();
        assert_eq!(first, [true, true, false]);
        assert!(
            effects.iter().all(|e| e.accrual == Some(d("20"))),
            "every sale accrues"
        );
    }

    fn moved(accrued: &str, paid: Option<(Wallet, &str)>) -> ReceiptMovements {
        ReceiptMovements {
            accrued: d(accrued),
            paid: paid.map(|(w, a)| (w, d(a))),
        }
    }

    /// Applies refunds one after the other, as storage records them.
    fn refund_all(
        total: &str,
        sale_moved: &ReceiptMovements,
        refunds: &[&str],
        available: Decimal,
    ) -> Vec<RefundEffects> {
        let mut before = RefundedBefore::default();
        refunds
            .iter()
            .map(|r| {
                let effects = refund_effects(d(total), sale_moved, &before, d(r), available, false)
                    .expect("in range");
                before.refunded += d(r);
                before.accrual_reversed += effects.accrual_due;
                before.payment_returned += effects.payment_returned();
                effects
            })
            .collect()
    }

    #[test]
    fn a_full_refund_gives_the_payment_back_and_takes_the_accrual_back() {
        let sale_moved = moved("200", Some((Wallet::Referral, "100")));
        let effects = refund_all("10000", &sale_moved, &["10000"], d("1000"));
        assert_eq!(
            effects,
            [RefundEffects {
                given_back: Some((Wallet::Referral, d("100"))),
                accrual_due: d("200"),
                taken_back: Some(d("200")),
                taken_from: Wallet::Main,
                shortfall: Decimal::ZERO,
                spent_lowered: d("10000"),
            }]
        );
    }

    #[test]
    fn uneven_partial_refunds_add_up_to_exactly_the_sale() {
        let sale_moved = moved("200", Some((Wallet::Main, "100")));
        let effects = refund_all("10000", &sale_moved, &["2500", "7500"], d("1000"));
        let back: Vec<Decimal> = effects
            .iter()
            .map(RefundEffects::payment_returned)
            .collect();
        let taken: Vec<Decimal> = effects.iter().map(RefundEffects::accrual_taken).collect();
        assert_eq!(back, [d("25"), d("75")]);
        assert_eq!(taken, [d("50"), d("150")]);
    }

    #[test]
    fn a_refund_larger_than_the_sale_reverses_no_more_than_the_sale() {
        let sale_moved = moved("200", Some((Wallet::Main, "100")));
        let effects = refund_all("10000", &sale_moved, &["25000"], d("1000"));
        assert_eq!(effects[0].spent_lowered, d("10000"));
        assert_eq!(effects[0].payment_returned(), d("100"));
        assert_eq!(effects[0].accrual_taken(), d("200"));
        // And a refund after everything was refunded reverses nothing.
        let effects = refund_all("10000", &sale_moved, &["10000", "500"], d("1000"));
        assert_eq!(
            effects[1].spent_lowered,
            Decimal::ZERO,
            "the sale counts no more"
        );
        assert_eq!(effects[1].given_back, None);
        assert_eq!(effects[1].taken_back, None);
        assert_eq!(effects[1].shortfall, Decimal::ZERO);
    }

    #[test]
    fn a_refund_of_an_unsold_or_zero_sale_moves_nothing() {
        for (total, sale_moved) in [
            ("0", moved("200", Some((Wallet::Main, "100")))),
            ("10000", ReceiptMovements::default()),
        ] {
            let effects = refund_effects(
                d(total),
                &sale_moved,
                &RefundedBefore::default(),
                d("100"),
                d("1000"),
                false,
            )
            .expect("in range");
            assert_eq!(
                effects,
                RefundEffects {
                    given_back: None,
                    accrual_due: Decimal::ZERO,
                    taken_back: None,
                    taken_from: Wallet::Main,
                    shortfall: Decimal::ZERO,
                    spent_lowered: if total == "0" { d("0") } else { d("100") },
                }
            );
        }
    }

    #[test]
    fn a_refund_of_zero_is_no_refund() {
        assert_eq!(refund_amount(Decimal::ZERO), None);
        assert_eq!(refund_amount(d("-150.5")), Some(d("150.5")));
        assert_eq!(refund_amount(d("150.5")), Some(d("150.5")));
    }

    #[test]
    fn a_refund_after_the_accrual_was_spent_takes_what_is_left_and_records_the_shortfall() {
        let sale_moved = moved("200", None);
        let effects = refund_all("10000", &sale_moved, &["10000"], d("30"));
        assert_eq!(effects[0].accrual_taken(), d("30"));
        assert_eq!(effects[0].shortfall, d("170"));
        assert_eq!(effects[0].accrual_due, d("200"));
        // Nothing left at all (or a wallet reserved beyond its balance): nothing taken.
        for available in [Decimal::ZERO, d("-5")] {
            let effects = refund_all("10000", &sale_moved, &["10000"], available);
            assert_eq!(effects[0].taken_back, None);
            assert_eq!(effects[0].shortfall, d("200"));
        }
    }

    #[test]
    fn bonuses_given_back_to_the_main_wallet_count_towards_what_is_taken_back() {
        let sale_moved = moved("200", Some((Wallet::Main, "100")));
        let effects = refund_all("10000", &sale_moved, &["10000"], d("50"));
        assert_eq!(
            effects[0].accrual_taken(),
            d("150"),
            "50 there, 100 given back"
        );
        assert_eq!(effects[0].shortfall, d("50"));
        // Given back to the referral wallet, they do not.
        let sale_moved = moved("200", Some((Wallet::Referral, "100")));
        let effects = refund_all("10000", &sale_moved, &["10000"], d("50"));
        assert_eq!(effects[0].accrual_taken(), d("50"));
    }

    #[test]
    fn a_promo_code_credits_the_program_bonus_and_makes_the_friend_the_referrer() {
        let effects =
            promo_effects(&legacy(false), 1, Some(2), &PromoState::default()).expect("accepted");
        assert_eq!(
            effects,
            PromoEffects {
                referrer: 2,
                bonus: Some(amount("50")),
            }
        );
        let none = promo_effects(&settings("2", "5"), 1, Some(2), &PromoState::default());
        assert_eq!(none.map(|e| e.bonus).ok(), Some(Some(amount("50"))));
        let mut free = settings("2", "5");
        free.referral_promo_bonus = Money::ZERO;
        let effects = promo_effects(&free, 1, Some(2), &PromoState::default()).expect("accepted");
        assert_eq!(effects.bonus, None, "a zero bonus is no entry");
    }

    #[test]
    fn a_promo_code_is_refused_when_unknown_own_after_a_referral_or_after_a_purchase() {
        let program = legacy(false);
        let refused =
            |referrer, state: PromoState| match promo_effects(&program, 1, referrer, &state) {
                Err(Error::Invalid { message, .. }) => message,
                Err(other) => other
                    .conflict_code()
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                Ok(_) => String::new(),
            };
        assert!(refused(None, PromoState::default()).contains("no customer"));
        assert!(refused(Some(1), PromoState::default()).contains("own promo code"));
        let referred = PromoState {
            referred_by: Some(3),
            has_made_first_purchase: false,
        };
        assert_eq!(refused(Some(2), referred), "already_referred");
        let bought = PromoState {
            referred_by: None,
            has_made_first_purchase: true,
        };
        assert_eq!(refused(Some(2), bought), "after_first_purchase");
    }

    fn tiered(base: AccrualBase) -> BonusProgramSettings {
        let tier = |name: &str, min: &str, pct: &str| Tier {
            name: name.into(),
            min_spent: Money::from_str(min).expect("money"),
            percentage: percent(pct),
        };
        BonusProgramSettings {
            invoice_bonus_percentage: percent("1"),
            accrual_base: base,
            tiers: vec![tier("Silver", "10000", "3"), tier("Gold", "50000", "5")],
            ..BonusProgramSettings::default()
        }
    }

    #[test]
    fn a_tiered_customer_earns_the_tier_reached_before_the_purchase() {
        let program = tiered(AccrualBase::MoneyPaid);
        // 1 % below Silver, even when this purchase crosses it; 3 % once Silver was reached.
        assert_eq!(
            purchase_accrual(&program, d("5000"), d("1000"), d("9000")),
            Ok(d("40"))
        );
        assert_eq!(
            purchase_accrual(&program, d("5000"), d("1000"), d("10000")),
            Ok(d("120"))
        );
        assert_eq!(
            purchase_accrual(&program, d("5000"), Decimal::ZERO, d("50000")),
            Ok(d("250"))
        );
    }

    #[test]
    fn crossing_a_tier_is_reported_once_and_a_batch_counts_the_earlier_sale() {
        let program = tiered(AccrualBase::Total);
        let buyer = Buyer {
            spent_total: d("8000"),
            ..Buyer::default()
        };
        let of = |total: &str| BatchSale {
            buyer_key: 1,
            settings: &program,
            sale: sale(total),
            buyer,
        };
        let effects = batch_sale_effects(&[of("3000"), of("1000"), of("40000")]).expect("in range");
        let spent: Vec<Decimal> = effects.iter().map(|e| e.spent_after).collect();
        assert_eq!(spent, [d("11000"), d("12000"), d("52000")]);
        let reached: Vec<Option<String>> = effects
            .iter()
            .map(|e| e.tier_reached.as_ref().map(|t| t.name.clone()))
            .collect();
        assert_eq!(reached, [Some("Silver".into()), None, Some("Gold".into())]);
        // The second and third sales earn Silver's 3 %: the first one's money counts.
        let accrued: Vec<Option<Decimal>> = effects.iter().map(|e| e.accrual).collect();
        assert_eq!(accrued, [Some(d("30")), Some(d("30")), Some(d("1200"))]);
    }

    #[test]
    fn a_delayed_credit_is_pending_until_the_delay_and_expires_after_its_lifetime() {
        let at = DateTime::from_timestamp(1_700_000_000, 0).expect("instant");
        let day = chrono::TimeDelta::days(1);
        let mut program = tiered(AccrualBase::Total);
        let timing = credit_timing(&program, at, true).expect("in range");
        assert_eq!(
            timing,
            LotTiming {
                pending: false,
                activates_at: at,
                expires_at: None
            }
        );
        program.accrual_delay_days = 14;
        program.bonus_lifetime_days = Some(30);
        let timing = credit_timing(&program, at, true).expect("in range");
        assert!(timing.pending);
        assert_eq!(timing.activates_at, at + day * 14);
        assert_eq!(timing.expires_at, Some(at + day * 44));
        // An operator's or a promo credit does not wait, but expires all the same.
        let timing = credit_timing(&program, at, false).expect("in range");
        assert!(!timing.pending);
        assert_eq!(timing.expires_at, Some(at + day * 30));
    }

    fn lot(id: i64, remaining: &str, expires_day: Option<i64>) -> LotBalance {
        LotBalance {
            id,
            remaining: d(remaining),
            expires_at: expires_day.and_then(|n| DateTime::from_timestamp(n * 86_400, 0)),
        }
    }

    #[test]
    fn an_accrual_is_taken_back_from_its_own_lot_first() {
        let lots = [
            lot(1, "100", Some(5)),
            lot(2, "30", None),
            lot(3, "50", Some(9)),
        ];
        assert_eq!(
            take_back_from_lots(Some(2), &lots, d("120")).expect("in range"),
            (vec![(2, d("30")), (1, d("90"))], Decimal::ZERO)
        );
        assert_eq!(
            take_back_from_lots(None, &lots, d("120")).expect("in range"),
            (vec![(1, d("100")), (3, d("20"))], Decimal::ZERO)
        );
        assert_eq!(
            take_back_from_lots(Some(2), &lots, d("200"))
                .expect("in range")
                .1,
            d("20")
        );
    }

    #[test]
    fn a_refund_before_activation_cancels_the_pending_accrual_without_shortfall() {
        let sale_moved = moved("200", Some((Wallet::Main, "100")));
        // The main wallet is empty, but the accrual is still pending in full.
        let effects = refund_effects(
            d("10000"),
            &sale_moved,
            &RefundedBefore::default(),
            d("2500"),
            d("200"),
            true,
        )
        .expect("in range");
        assert_eq!(
            effects,
            RefundEffects {
                given_back: Some((Wallet::Main, d("25"))),
                accrual_due: d("50"),
                taken_back: Some(d("50")),
                taken_from: Wallet::Pending,
                shortfall: Decimal::ZERO,
                spent_lowered: d("2500"),
            }
        );
    }

    mod invariants {
        use super::*;
        use proptest::prelude::*;

        fn cents(max: i64) -> impl Strategy<Value = Decimal> {
            (0..=max).prop_map(|c| Decimal::new(c, 2))
        }

        proptest! {
            #[test]
            fn partial_refunds_never_sum_to_more_than_the_original(
                total in cents(10_000_000).prop_filter("sold", |t| !t.is_zero()),
                accrued in cents(1_000_000),
                paid in cents(1_000_000),
                refunds in prop::collection::vec(1i64..=5_000_000, 1..8),
            ) {
                let sale_moved = ReceiptMovements { accrued, paid: Some((Wallet::Referral, paid)) };
                let mut before = RefundedBefore::default();
                let mut spent_lowered = Decimal::ZERO;
                for r in refunds {
                    let refunded = Decimal::new(r, 2);
                    let e = refund_effects(total, &sale_moved, &before, refunded, Decimal::MAX, false)
                        .expect("in range");
                    before.refunded += refunded;
                    before.accrual_reversed += e.accrual_due;
                    before.payment_returned += e.payment_returned();
                    spent_lowered += e.spent_lowered;
                    prop_assert!(before.accrual_reversed <= accrued);
                    prop_assert!(before.payment_returned <= paid);
                    // What the buyer spent goes down by the refunds, never by more than the sale.
                    prop_assert_eq!(spent_lowered, before.refunded.min(total));
                }
                if before.refunded >= total {
                    prop_assert_eq!(before.accrual_reversed, accrued);
                    prop_assert_eq!(before.payment_returned, paid);
                }
            }

            #[test]
            fn taking_back_empties_the_own_lot_first_and_never_takes_more_than_a_lot_holds(
                holdings in prop::collection::vec((0i64..10_000, prop::option::of(0i64..400)), 1..10),
                own in 0usize..10,
                cents in 0i64..100_000,
            ) {
                let lots: Vec<LotBalance> = holdings
                    .iter()
                    .enumerate()
                    .map(|(i, (c, exp))| LotBalance {
                        id: i as i64,
                        remaining: Decimal::new(*c, 2),
                        expires_at: exp.and_then(|n| DateTime::from_timestamp(n * 86_400, 0)),
                    })
                    .collect();
                let own = (own < lots.len()).then_some(own as i64);
                let amount = Decimal::new(cents, 2);
                let (taken, short) = take_back_from_lots(own, &lots, amount).expect("in range");
                let total: Decimal = taken.iter().map(|t| t.1).sum();
                prop_assert_eq!(total + short, amount);
                let mut seen = HashSet::new();
                for (id, take) in &taken {
                    prop_assert!(seen.insert(*id), "a lot is taken from once");
                    let held = lots.iter().find(|l| l.id == *id).expect("one of the lots");
                    prop_assert!(*take > Decimal::ZERO && *take <= held.remaining);
                }
                if let Some(own) = own {
                    let own_lot = lots.iter().find(|l| l.id == own).expect("own lot");
                    let from_own = taken.iter().find(|t| t.0 == own).map_or(Decimal::ZERO, |t| t.1);
                    prop_assert_eq!(from_own, own_lot.remaining.min(amount));
                }
            }

            #[test]
            fn a_refund_never_takes_a_wallet_below_zero(
                total in cents(10_000_000).prop_filter("sold", |t| !t.is_zero()),
                accrued in cents(1_000_000),
                paid in prop::option::of(cents(1_000_000)),
                to_main in any::<bool>(),
                available in cents(2_000_000),
                refunded in 1i64..=10_000_000,
            ) {
                let wallet = if to_main { Wallet::Main } else { Wallet::Referral };
                let sale_moved = ReceiptMovements { accrued, paid: paid.map(|p| (wallet, p)) };
                let e = refund_effects(
                    total,
                    &sale_moved,
                    &RefundedBefore::default(),
                    Decimal::new(refunded, 2),
                    available,
                    false,
                )
                .expect("in range");
                let given_to_main = match e.given_back {
                    Some((Wallet::Main, back)) => back,
                    _ => Decimal::ZERO,
                };
                prop_assert!(available + given_to_main - e.accrual_taken() >= Decimal::ZERO);
                prop_assert!(e.shortfall >= Decimal::ZERO);
            }

            #[test]
            fn rounding_happens_once_per_entry(
                total in cents(10_000_000).prop_filter("sold", |t| !t.is_zero()),
                accrued in cents(1_000_000),
                refunds in prop::collection::vec(1i64..=5_000_000, 1..8),
                percent_bp in 0i64..=10_000,
            ) {
                // A purchase's accrual is the exact percentage, rounded once.
                let mut program = settings("0", "0");
                program.invoice_bonus_percentage =
                    Percent::new(Decimal::new(percent_bp, 2)).expect("0 to 100");
                let exact = total * Decimal::new(percent_bp, 2) / Decimal::ONE_HUNDRED;
                let accrual = sale_effects(&program, &Sale { total, hold: None }, &Buyer::default())
                    .expect("in range")
                    .accrual
                    .unwrap_or(Decimal::ZERO);
                prop_assert_eq!(accrual, round_money(exact));
                // After each refund, what was reversed in all is the cumulative share rounded
                // once, not the sum of rounded pieces.
                let sale_moved = ReceiptMovements { accrued, paid: None };
                let mut before = RefundedBefore::default();
                for r in refunds {
                    let refunded = Decimal::new(r, 2);
                    let e = refund_effects(total, &sale_moved, &before, refunded, Decimal::MAX, false)
                        .expect("in range");
                    prop_assert!(e.accrual_due.normalize().scale() <= 2);
                    before.refunded += refunded;
                    before.accrual_reversed += e.accrual_due;
                    let share = before.refunded.min(total) / total;
                    prop_assert_eq!(before.accrual_reversed, round_money(accrued * share).min(accrued));
                }
            }
        }
    }
}
