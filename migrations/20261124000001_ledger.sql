-- The ledger: organizations (tenants), their customers with three wallets each, and the append-only
-- entries that move those wallets. Balances are cached on the customer row, but only the trigger on
-- ledger_entries ever changes them, in the same transaction as the entry; CHECK constraints make a
-- negative wallet impossible whatever the code does.

create table organizations (
    id bigint generated always as identity primary key,
    name text not null check (length(name) between 1 and 200),
    phone_numbers text[] not null default '{}',
    address text not null default '',
    whatsapp_link text not null default '',
    telegram_link text not null default '',
    -- IANA name; local times (date_str, bill dates) are shown in it.
    time_zone text not null default 'Asia/Almaty',
    invoice_bonus_percentage numeric not null default 0
        check (invoice_bonus_percentage between 0 and 100),
    referral_promo_bonus numeric not null default 0
        check (referral_promo_bonus >= 0 and referral_promo_bonus = round(referral_promo_bonus, 2)),
    referrer_first_purchase_percentage numeric not null default 0
        check (referrer_first_purchase_percentage between 0 and 100),
    -- false: a bill paid partly with bonuses earns nothing (the old system's last rule).
    accrue_when_paying_with_bonuses boolean not null default false,
    -- Write-only through the API; needed in clear to call the Bot API.
    telegram_bot_token text,
    -- sha256 of an imported legacy export, so importing it twice finds the first organization.
    legacy_fingerprint text unique,
    created_at timestamptz not null default now()
);

-- A cash register integration. The token is shown once; only its sha256 is kept.
create table integrations (
    id bigint generated always as identity primary key,
    org_id bigint not null references organizations (id),
    system text not null check (length(system) between 1 and 200),
    token_sha256 bytea not null unique,
    created_at timestamptz not null default now()
);
create index integrations_org on integrations (org_id);

-- New customers take ids from here; imported ones keep theirs (ids are unique per organization only).
create sequence customer_ids start with 100000;
-- Orders each referrer's `referrals` list by when the friend entered the code.
create sequence referral_order;

create table customers (
    org_id bigint not null references organizations (id),
    id bigint not null check (id > 0),
    telegram_id bigint,
    first_name text,
    last_name text,
    username text,
    photo_url text,
    is_premium boolean not null default false,
    phone_number text,
    visited_at timestamptz,
    referred_by bigint,
    referral_order bigint,
    has_been_welcomed boolean not null default false,
    has_made_first_purchase boolean not null default false,
    -- Wallets: main bonuses, referral bonuses, debt. "held" is what open bills have reserved.
    bonuses numeric not null default 0 constraint main_wallet_not_negative check (bonuses >= 0),
    referral_bonuses numeric not null default 0
        constraint referral_wallet_not_negative check (referral_bonuses >= 0),
    debts numeric not null default 0 constraint debt_not_negative check (debts >= 0),
    bonuses_held numeric not null default 0
        constraint main_wallet_holds_covered check (bonuses_held >= 0 and bonuses_held <= bonuses),
    referral_bonuses_held numeric not null default 0
        constraint referral_wallet_holds_covered
        check (referral_bonuses_held >= 0 and referral_bonuses_held <= referral_bonuses),
    created_at timestamptz not null default now(),
    primary key (org_id, id),
    foreign key (org_id, referred_by) references customers (org_id, id),
    check (referred_by is null or referred_by <> id)
);
create unique index customers_telegram on customers (org_id, telegram_id) where telegram_id is not null;
create index customers_referred_by on customers (org_id, referred_by) where referred_by is not null;

create table ledger_entries (
    seq bigint generated always as identity primary key,
    org_id bigint not null,
    customer_id bigint not null,
    wallet text not null check (wallet in ('main', 'referral', 'debt')),
    -- The legacy "type": debts grow by accrual and shrink by payment, bonus wallets by deduction.
    kind text not null check (
        (wallet = 'debt' and kind in ('accrual', 'payment'))
        or (wallet <> 'debt' and kind in ('accrual', 'deduction'))
    ),
    amount numeric not null check (amount = round(amount, 2) and (amount > 0 or (source = 'import' and amount = 0))),
    description text not null,
    -- Who moved the money: import, operator, promo, receipt, refund.
    source text not null,
    -- The receipt, bill or request behind the entry.
    source_ref text,
    -- Null only for imported rows that had none (the legacy export is uneven).
    transaction_type text,
    occurred_at timestamptz not null,
    -- The UTC offset the entry was written with, so `date` round-trips as it was ("+06:00" vs "+05:00").
    utc_offset_seconds integer not null,
    -- Index in the imported wallet history; null for entries written here.
    legacy_position integer,
    created_at timestamptz not null default now(),
    foreign key (org_id, customer_id) references customers (org_id, id)
);
create index ledger_entries_customer on ledger_entries (org_id, customer_id, occurred_at desc, seq);

create function apply_ledger_entry() returns trigger language plpgsql as $$
declare
    delta numeric := case when new.kind = 'accrual' then new.amount else -new.amount end;
begin
    if new.wallet = 'main' then
        update customers set bonuses = bonuses + delta where org_id = new.org_id and id = new.customer_id;
    elsif new.wallet = 'referral' then
        update customers set referral_bonuses = referral_bonuses + delta
        where org_id = new.org_id and id = new.customer_id;
    else
        update customers set debts = debts + delta where org_id = new.org_id and id = new.customer_id;
    end if;
    return new;
end $$;

create trigger ledger_entries_apply after insert on ledger_entries
    for each row execute function apply_ledger_entry();

create function refuse_ledger_rewrite() returns trigger language plpgsql as $$
begin
    raise exception 'ledger entries are append-only; post a correcting entry instead';
end $$;

create trigger ledger_entries_append_only before update or delete on ledger_entries
    for each row execute function refuse_ledger_rewrite();

-- Purchases as the legacy export lists them under a customer's `invoices`.
create table invoices (
    org_id bigint not null,
    invoice_id text not null,
    customer_id bigint not null,
    occurred_at timestamptz not null,
    utc_offset_seconds integer not null,
    total_amount numeric not null,
    items jsonb not null,
    bonuses_deducted numeric,
    bonus_source_used text,
    -- An imported invoice exactly as it was exported (keys vary across the old system's versions).
    legacy jsonb,
    legacy_position integer,
    created_at timestamptz not null default now(),
    primary key (org_id, invoice_id),
    foreign key (org_id, customer_id) references customers (org_id, id)
);
create index invoices_customer on invoices (org_id, customer_id);

-- Open bills the cash registers load. A bonus payment is held against the wallet at creation.
create table bills (
    id bigint generated by default as identity primary key,
    org_id bigint not null references organizations (id),
    customer_id bigint not null,
    number text not null check (length(number) between 1 and 64),
    status text not null default 'open' check (status in ('open', 'paid', 'cancelled')),
    items jsonb not null,
    total numeric not null check (total >= 0),
    bonus_payment numeric not null default 0 check (bonus_payment >= 0 and bonus_payment <= total),
    bonus_wallet text check (bonus_wallet in ('main', 'referral')),
    created_at timestamptz not null default now(),
    closed_at timestamptz,
    unique (org_id, number),
    foreign key (org_id, customer_id) references customers (org_id, id),
    check ((bonus_payment = 0) = (bonus_wallet is null))
);
create index bills_open on bills (org_id, created_at desc) where status = 'open';

-- The first answer to a money-moving request, replayed for a retry with the same Idempotency-Key.
create table idempotency_keys (
    key text primary key,
    request_sha256 bytea not null,
    -- Filled in the transaction that claimed the key, so a committed row is always complete.
    status smallint,
    body jsonb,
    created_at timestamptz not null default now()
);
