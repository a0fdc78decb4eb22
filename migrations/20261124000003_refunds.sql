-- Refunds (PAYBACK receipts) of earlier sales: what each gave back and took back, linked to the
-- sale, so several partial refunds add up and never reverse more than the sale earned or spent.
create table refunds (
    org_id bigint not null,
    -- The PAYBACK receipt (data.id).
    receipt_id text not null,
    -- The SELL receipt it refunds.
    sale_receipt_id text not null,
    customer_id bigint not null,
    invoice_id text not null,
    refunded_amount numeric not null check (refunded_amount > 0),
    -- The part of the sale's accrual this refund reverses, and how much of it the wallet still had.
    accrual_due numeric not null check (accrual_due >= 0),
    accrual_taken numeric not null check (accrual_taken >= 0 and accrual_taken <= accrual_due),
    -- Shortfall: bonuses the customer had already spent; recorded for operators, never a negative balance.
    shortfall numeric generated always as (accrual_due - accrual_taken) stored,
    -- The part of the bonuses paid for the sale that is given back.
    payment_returned numeric not null check (payment_returned >= 0),
    created_at timestamptz not null default now(),
    primary key (org_id, receipt_id),
    foreign key (org_id, customer_id) references customers (org_id, id)
);
create index refunds_by_sale on refunds (org_id, sale_receipt_id);
create index refunds_with_shortfall on refunds (org_id, created_at desc) where accrual_due > accrual_taken;
