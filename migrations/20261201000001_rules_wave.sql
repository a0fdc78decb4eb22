-- The rules shops expect (#12). Every new setting is off by default, so an imported legacy
-- organization behaves exactly as before.

-- Settings --------------------------------------------------------------------------------------
alter table organizations
    -- The largest share of a bill the customer may pay with bonuses.
    add column max_bonus_payment_percentage numeric not null default 100
        check (max_bonus_payment_percentage between 0 and 100),
    -- What a purchase earns on: the whole total, nothing when bonuses paid part of it (the old
    -- system's last rule), or the part paid in money.
    add column accrual_base text not null default 'nothing_when_paid_with_bonuses'
        check (accrual_base in ('total', 'nothing_when_paid_with_bonuses', 'money_paid')),
    -- Accruals (and referral rewards) wait this many days after the sale in a pending wallet.
    add column accrual_delay_days integer not null default 0 check (accrual_delay_days between 0 and 3650),
    -- Bonuses expire this many days after they became spendable; null: never.
    add column bonus_lifetime_days integer check (bonus_lifetime_days between 1 and 36500),
    -- Customers are told this many days before their bonuses burn; 0: not told.
    add column expiry_warning_days integer not null default 7 check (expiry_warning_days between 0 and 365),
    -- [{name, min_spent, percentage}], ascending by min_spent; empty: one percentage for all.
    add column tiers jsonb not null default '[]' check (jsonb_typeof(tiers) = 'array'),
    add column welcome_bonus numeric not null default 0
        check (welcome_bonus >= 0 and welcome_bonus = round(welcome_bonus, 2)),
    add column birthday_bonus numeric not null default 0
        check (birthday_bonus >= 0 and birthday_bonus = round(birthday_bonus, 2)),
    -- The birthday bonus is credited once a year, from this many days before the birthday to as
    -- many after it.
    add column birthday_window_days integer not null default 0 check (birthday_window_days between 0 and 60);

update organizations set accrual_base = 'total' where accrue_when_paying_with_bonuses;
alter table organizations drop column accrue_when_paying_with_bonuses;

-- Customers -------------------------------------------------------------------------------------
alter table customers
    -- Accruals not spendable yet (main and referral), moved by the ledger trigger like the others.
    add column pending_bonuses numeric not null default 0
        constraint pending_wallet_not_negative check (pending_bonuses >= 0),
    add column pending_referral_bonuses numeric not null default 0
        constraint pending_referral_wallet_not_negative check (pending_referral_bonuses >= 0),
    -- Set once, by an operator or by the customer.
    add column birth_date date,
    -- The money the customer has spent (sales less refunds): what their tier is reached by.
    add column spent_total numeric not null default 0 check (spent_total >= 0);

-- The ledger: two more wallets and the sources of the new movements ------------------------------
alter table ledger_entries drop constraint ledger_entries_wallet_check;
alter table ledger_entries add constraint ledger_entries_wallet_check
    check (wallet in ('main', 'referral', 'debt', 'pending', 'referral_pending'));

create or replace function apply_ledger_entry() returns trigger language plpgsql as $$
declare
    delta numeric := case when new.kind = 'accrual' then new.amount else -new.amount end;
    keep boolean := new.source = 'import';
begin
    if new.wallet = 'main' then
        update customers set bonuses = case when keep then bonuses + delta else trim_scale(bonuses + delta) end
        where org_id = new.org_id and id = new.customer_id;
    elsif new.wallet = 'referral' then
        update customers set referral_bonuses = case when keep then referral_bonuses + delta
                                                     else trim_scale(referral_bonuses + delta) end
        where org_id = new.org_id and id = new.customer_id;
    elsif new.wallet = 'pending' then
        update customers set pending_bonuses = trim_scale(pending_bonuses + delta)
        where org_id = new.org_id and id = new.customer_id;
    elsif new.wallet = 'referral_pending' then
        update customers set pending_referral_bonuses = trim_scale(pending_referral_bonuses + delta)
        where org_id = new.org_id and id = new.customer_id;
    else
        update customers set debts = case when keep then debts + delta else trim_scale(debts + delta) end
        where org_id = new.org_id and id = new.customer_id;
    end if;
    return new;
end $$;

-- Once-only bonuses: one welcome per customer, one birthday bonus per customer and year
-- (source_ref = the year), whatever retries, restarts or concurrent workers do.
create unique index ledger_entries_once on ledger_entries (org_id, customer_id, source, source_ref)
    where source in ('welcome', 'birthday');
-- The activity report reads entries by organization and time.
create index ledger_entries_org_time on ledger_entries (org_id, occurred_at);

-- Lots: what each accrual left in a bonus wallet, for pending bonuses and expiry --------------------
-- Every credit to a bonus wallet (main or referral) is a lot; every debit takes from lots. The sum
-- of a customer's lots equals the wallet (pending lots: the pending wallet).
create table bonus_lots (
    id bigint generated always as identity primary key,
    org_id bigint not null,
    customer_id bigint not null,
    -- The wallet the lot is spendable from.
    wallet text not null check (wallet in ('main', 'referral')),
    -- What was credited, and what is left of it.
    amount numeric not null check (amount >= 0),
    remaining numeric not null check (remaining >= 0 and remaining <= amount),
    -- In the pending wallet until activated (at or after activates_at).
    pending boolean not null,
    activates_at timestamptz not null,
    -- Null: never expires.
    expires_at timestamptz,
    -- What credited it: receipt, refund, promo, operator, welcome, birthday, import, opening.
    source text not null,
    source_ref text,
    -- The invoice a purchase's lot came from, for the activation entry's text.
    invoice_id text,
    created_at timestamptz not null default now(),
    foreign key (org_id, customer_id) references customers (org_id, id),
    check (expires_at is null or expires_at >= activates_at)
);
-- Spending: a customer's lots with something left, soonest expiry first.
create index bonus_lots_customer on bonus_lots (org_id, customer_id, wallet, expires_at, id) where remaining > 0;
-- The scheduled steps: due activations and due expiries.
create index bonus_lots_activation on bonus_lots (activates_at) where pending;
create index bonus_lots_expiry on bonus_lots (expires_at) where remaining > 0 and not pending and expires_at is not null;
create index bonus_lots_source on bonus_lots (org_id, source, source_ref);

-- What each movement took from or gave back to each lot (negative: taken), so a refund gives back
-- to the lots its sale's payment came from.
create table lot_moves (
    lot_id bigint not null references bonus_lots (id),
    org_id bigint not null,
    -- The movement: its source and reference (receipt id, refund receipt id, request key…).
    source text not null,
    source_ref text,
    amount numeric not null check (amount <> 0),
    created_at timestamptz not null default now()
);
create index lot_moves_source on lot_moves (org_id, source, source_ref);
create index lot_moves_lot on lot_moves (lot_id);

-- Today's balances become lots without expiry (as do imported legacy balances).
insert into bonus_lots (org_id, customer_id, wallet, amount, remaining, pending, activates_at, source)
select org_id, id, 'main', bonuses, bonuses, false, created_at, 'opening' from customers where bonuses > 0
union all
select org_id, id, 'referral', referral_bonuses, referral_bonuses, false, created_at, 'opening'
from customers where referral_bonuses > 0;

-- Expiry warnings sent: once per customer and expiry date.
create table expiry_warnings (
    org_id bigint not null,
    customer_id bigint not null,
    expires_on date not null,
    amount numeric not null,
    created_at timestamptz not null default now(),
    primary key (org_id, customer_id, expires_on),
    foreign key (org_id, customer_id) references customers (org_id, id)
);

-- Receipts: the sale's own time (the POS's dateTime), beside when a worker applied it --------------
alter table receipts add column sold_at timestamptz;
