-- The updates the shop's bot has answered, so one Telegram delivers again (it does when the webhook
-- answered slowly or with an error) changes nothing and gets no second answer. Update ids count up
-- per bot, so the bot's id (the token's digits before the colon) is part of the key: a new bot's
-- ids start elsewhere. Telegram keeps an update for at most a day; rows older than two days are
-- removed by the webhook itself, so the table holds about two days of one shop's messages.
create table bot_updates (
    org_id bigint not null references organizations (id) on delete cascade,
    bot_id bigint not null,
    update_id bigint not null,
    received_at timestamptz not null default now(),
    primary key (org_id, bot_id, update_id)
);
create index bot_updates_age on bot_updates (org_id, received_at);
