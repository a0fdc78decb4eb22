-- Receipts posted by the cash registers, as the workers applied them, and the outbox of
-- notifications written in the same transactions.

-- One row per event the POS sent (its `id`); a receipt (`data.id`) takes effect once per
-- organization, enforced by the partial unique index below.
create table receipts (
    org_id bigint not null references organizations (id),
    event_id text not null,
    receipt_id text,
    integration_id bigint,
    event_type text not null,
    -- SELL, PAYBACK, BUY…; null for events that are not receipts.
    receipt_type text,
    -- processed: applied; duplicate: an event or receipt seen before, no effect; unmatched: no
    -- bill to apply it to (operators can attach it); ignored: not something that moves bonuses;
    -- retrying / dead: failed attempts, with the last error.
    status text not null check (status in ('processed', 'duplicate', 'unmatched', 'ignored', 'retrying', 'dead')),
    reason text,
    bill_id bigint,
    customer_id bigint,
    invoice_id text,
    total_amount numeric,
    attempts integer not null default 1,
    last_error text,
    payload jsonb not null,
    -- When ingest acknowledged it to the POS (for the end-to-end latency).
    received_at timestamptz not null,
    processed_at timestamptz,
    updated_at timestamptz not null default now(),
    primary key (org_id, event_id)
);
create unique index receipts_take_effect_once on receipts (org_id, receipt_id)
    where status in ('processed', 'unmatched', 'ignored');
create index receipts_by_status on receipts (status, updated_at desc);
create index receipts_by_bill on receipts (org_id, bill_id) where bill_id is not null;

alter table invoices add column receipt_id text;
alter table bills add column paid_by_receipt text;

-- Notifications to send, written in the transaction that caused them; the notifier relays them.
create table outbox (
    id bigint generated always as identity primary key,
    org_id bigint not null references organizations (id),
    customer_id bigint not null,
    -- purchase_accrual, referral_reward, promo_bonus, operator_accrual, bonus_payment, refund
    kind text not null,
    payload jsonb not null,
    -- The receipt (event id) behind it, so one grep follows a receipt to its message.
    trace_id text,
    created_at timestamptz not null default now(),
    published_at timestamptz
);
create index outbox_unpublished on outbox (id) where published_at is null;
