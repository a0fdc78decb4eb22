-- Delivery state of each notification, so a notifier restart never resends what was sent.
alter table outbox
    -- pending: waiting; sending: handed to Telegram (if a notifier dies here the outcome is
    -- unknown: it becomes 'uncertain' rather than being sent twice); sent; skipped (no telegram_id,
    -- no bot); unreachable (blocked the bot, chat not found); retrying; dead; uncertain.
    add column status text not null default 'pending'
        check (status in ('pending', 'sending', 'sent', 'skipped', 'unreachable', 'retrying', 'dead', 'uncertain')),
    add column attempts integer not null default 0,
    add column last_error text,
    add column telegram_message_id bigint,
    add column sent_at timestamptz,
    add column updated_at timestamptz not null default now();
create index outbox_by_status on outbox (status, updated_at desc);

-- Set when Telegram refuses the chat (blocked, deactivated, never started); cleared when the
-- customer comes back through the Mini App.
alter table customers
    add column telegram_unreachable_at timestamptz,
    add column telegram_unreachable_reason text;

alter table organizations
    add column currency_symbol text not null default '₸' check (length(currency_symbol) between 1 and 8),
    -- kind → template; kinds not listed use the Russian defaults.
    add column notification_templates jsonb not null default '{}';
