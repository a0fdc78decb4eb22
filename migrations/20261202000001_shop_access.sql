-- Access scoped to one shop (#13): the shop's staff (Telegram users with a role), API keys for the
-- shop's own systems, who did each manual movement, and what the Mini App needs of the bot.

-- A Telegram user who runs one organization's program from its Mini App.
create table staff (
    org_id bigint not null references organizations (id),
    telegram_id bigint not null check (telegram_id > 0),
    role text not null check (role in ('owner', 'cashier')),
    -- As the one who added them named them (shown in the staff list and the audit trail).
    name text not null default '' check (length(name) <= 200),
    added_by text not null,
    added_at timestamptz not null default now(),
    primary key (org_id, telegram_id)
);

-- A key for the shop's own systems (an accounting system creating bills, a BI export). The secret
-- is shown once; only its sha256 is kept.
create table api_keys (
    id bigint generated always as identity primary key,
    org_id bigint not null references organizations (id),
    name text not null check (length(name) between 1 and 200),
    role text not null check (role in ('owner', 'cashier', 'reader')),
    secret_sha256 bytea not null unique,
    created_by text not null,
    created_at timestamptz not null default now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);
create index api_keys_org on api_keys (org_id, id);

-- Who made an entry by hand: `platform`, `staff:<telegram id>` or `key:<id>`; null for the
-- program's own entries (sales, refunds, schedules, imports).
alter table ledger_entries add column actor text;

-- The audit trail an owner reads: every change a shop's staff or key made, in the transaction
-- that made it.
create table audit_log (
    id bigint generated always as identity primary key,
    org_id bigint not null references organizations (id),
    at timestamptz not null default now(),
    actor text not null,
    action text not null,
    customer_id bigint,
    detail jsonb not null default '{}'
);
create index audit_log_by_org on audit_log (org_id, id desc);

alter table organizations
    -- The bot's @username (from getMe, when the token is set), for the links that open the app.
    add column telegram_bot_username text,
    -- The Mini App's short name in @BotFather (`t.me/<bot>/<short name>`); null: links open the
    -- bot (`?start=`) and its menu button opens the app.
    add column miniapp_short_name text
        check (miniapp_short_name ~ '^[A-Za-z0-9_]{3,30}$');

-- When the customer last let the bot write to them (`/start`, or write access granted in the app).
alter table customers add column messages_allowed_at timestamptz;
