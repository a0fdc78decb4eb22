-- The liability report at a million customers (#15): what an organization owes its customers, the
-- sum of every customer's wallets, is kept as it changes instead of summed from `customers` at each
-- report (a sequential scan of the organization, 0.5-1 s at 10^6 customers); what will expire is
-- read from an index of the organization's expiring lots instead of a scan of every lot.
--
-- The totals live in 16 rows per organization (shards), and a transaction adds its change to one
-- of them, chosen by its transaction id, so receipts applied at the same time do not queue on one
-- row. The report adds the shards up.
--
-- Every path that changes a wallet changes a `customers` row (the ledger trigger, the legacy import,
-- a merge, an insert with balances, a delete), so the totals follow `customers` itself, in two steps:
--  1. each row whose wallets changed adds NEW - OLD to its transaction's running change for the
--     organization, kept in a transaction-local setting (`loyalty_wallet_totals.o<org>`, nothing
--     written, undone with its savepoint);
--  2. at commit, a deferred constraint trigger writes that change to the transaction's shard, once
--     (only the transaction's first change queues it; it clears the setting).
-- Why at commit: a transaction that locked its shard row in the middle of its work could deadlock
-- with another one of the same shard (T1 holds the shard and waits for a customer T2 holds, T2 waits
-- for the shard). At commit, every customer lock of the transaction is already held and the shard is
-- its last lock; it is held only until the commit is flushed, and a transaction waiting for it waits
-- for a transaction that needs nothing more. No other trigger of this schema is deferred (the
-- foreign keys are checked at the end of each statement), so nothing takes a lock after the shard.
-- One write per transaction and organization, not one per changed customer: a batch of 250
-- receipts updates its shard row once, not 500 times (repeated updates of one row inside a
-- transaction each walk the row's earlier versions, which that transaction keeps alive).
create table org_wallet_totals (
    org_id bigint not null references organizations (id),
    shard smallint not null check (shard between 0 and 15),
    bonuses numeric not null default 0,
    referral_bonuses numeric not null default 0,
    debts numeric not null default 0,
    pending_bonuses numeric not null default 0,
    pending_referral_bonuses numeric not null default 0,
    primary key (org_id, shard)
);

-- Adds `sign` times the wallets of one customer row to its transaction's running change.
create function add_wallet_change(org bigint, sign integer, wallets numeric[]) returns void
language plpgsql as $$
declare
    name text := 'loyalty_wallet_totals.o' || org;
    sums numeric[] := coalesce(nullif(current_setting(name, true), '')::numeric[], '{0,0,0,0,0}');
begin
    for i in 1..5 loop
        sums[i] := sums[i] + sign * wallets[i];
    end loop;
    perform set_config(name, sums::text, true);
end $$;

create function collect_wallet_change() returns trigger language plpgsql as $$
begin
    if tg_op <> 'INSERT' then
        perform add_wallet_change(old.org_id, -1, array[old.bonuses, old.referral_bonuses, old.debts,
                                                       old.pending_bonuses, old.pending_referral_bonuses]);
    end if;
    if tg_op <> 'DELETE' then
        perform add_wallet_change(new.org_id, 1, array[new.bonuses, new.referral_bonuses, new.debts,
                                                      new.pending_bonuses, new.pending_referral_bonuses]);
    end if;
    return null;
end $$;

-- At commit: the transaction's change of each organization the row belongs to, to its shard.
create function write_wallet_change() returns trigger language plpgsql as $$
declare
    org bigint;
    name text;
    sums numeric[];
begin
    foreach org in array array_remove(array[old.org_id, new.org_id], null) loop
        name := 'loyalty_wallet_totals.o' || org;
        sums := nullif(current_setting(name, true), '')::numeric[];
        continue when sums is null;
        perform set_config(name, '', true);
        continue when sums = '{0,0,0,0,0}'::numeric[];
        insert into org_wallet_totals as t
            (org_id, shard, bonuses, referral_bonuses, debts, pending_bonuses, pending_referral_bonuses)
        values (org, (pg_current_xact_id()::text::bigint % 16)::smallint,
                sums[1], sums[2], sums[3], sums[4], sums[5])
        on conflict (org_id, shard) do update set
            bonuses = t.bonuses + excluded.bonuses,
            referral_bonuses = t.referral_bonuses + excluded.referral_bonuses,
            debts = t.debts + excluded.debts,
            pending_bonuses = t.pending_bonuses + excluded.pending_bonuses,
            pending_referral_bonuses = t.pending_referral_bonuses + excluded.pending_referral_bonuses;
    end loop;
    return null;
end $$;

-- Only rows whose wallets change (a new customer starts at zero; a visit or a name changes none).
create trigger customers_wallet_change_insert after insert on customers for each row
    when (new.bonuses <> 0 or new.referral_bonuses <> 0 or new.debts <> 0
          or new.pending_bonuses <> 0 or new.pending_referral_bonuses <> 0)
    execute function collect_wallet_change();
create trigger customers_wallet_change_update
    after update of org_id, bonuses, referral_bonuses, debts, pending_bonuses, pending_referral_bonuses
    on customers for each row
    when ((old.org_id, old.bonuses, old.referral_bonuses, old.debts, old.pending_bonuses, old.pending_referral_bonuses)
          is distinct from
          (new.org_id, new.bonuses, new.referral_bonuses, new.debts, new.pending_bonuses, new.pending_referral_bonuses))
    execute function collect_wallet_change();
create trigger customers_wallet_change_delete after delete on customers for each row
    when (old.bonuses <> 0 or old.referral_bonuses <> 0 or old.debts <> 0
          or old.pending_bonuses <> 0 or old.pending_referral_bonuses <> 0)
    execute function collect_wallet_change();

-- The same conditions, and only while the transaction has collected nothing for the organization
-- yet: its first change queues the one write at commit, the others queue nothing. (A constraint
-- trigger's WHEN is evaluated at the change, before the collecting trigger of that statement
-- runs. Rolled back to a savepoint, the setting and the events queued since go back together.)
create constraint trigger customers_wallet_totals_insert after insert on customers
    deferrable initially deferred for each row
    when (coalesce(current_setting('loyalty_wallet_totals.o' || new.org_id, true), '') = ''
          and (new.bonuses <> 0 or new.referral_bonuses <> 0 or new.debts <> 0
          or new.pending_bonuses <> 0 or new.pending_referral_bonuses <> 0))
    execute function write_wallet_change();
create constraint trigger customers_wallet_totals_update
    after update of org_id, bonuses, referral_bonuses, debts, pending_bonuses, pending_referral_bonuses
    on customers deferrable initially deferred for each row
    when ((coalesce(current_setting('loyalty_wallet_totals.o' || new.org_id, true), '') = ''
           or coalesce(current_setting('loyalty_wallet_totals.o' || old.org_id, true), '') = '')
          and (old.org_id, old.bonuses, old.referral_bonuses, old.debts, old.pending_bonuses, old.pending_referral_bonuses)
          is distinct from
          (new.org_id, new.bonuses, new.referral_bonuses, new.debts, new.pending_bonuses, new.pending_referral_bonuses))
    execute function write_wallet_change();
create constraint trigger customers_wallet_totals_delete after delete on customers
    deferrable initially deferred for each row
    when (coalesce(current_setting('loyalty_wallet_totals.o' || old.org_id, true), '') = ''
          and (old.bonuses <> 0 or old.referral_bonuses <> 0 or old.debts <> 0
               or old.pending_bonuses <> 0 or old.pending_referral_bonuses <> 0))
    execute function write_wallet_change();

-- What will expire within the report's horizons: the lots of the organization that expire by then
-- (the index holds what the sums need), not every lot of every organization.
create index bonus_lots_org_expiry on bonus_lots (org_id, expires_at) include (wallet, remaining, created_at)
    where remaining > 0 and expires_at is not null;

-- Today's totals, after the triggers exist: creating them locked `customers` against writes until
-- this migration commits, so no change falls between the sum and the triggers.
insert into org_wallet_totals
    (org_id, shard, bonuses, referral_bonuses, debts, pending_bonuses, pending_referral_bonuses)
select org_id, 0, sum(bonuses), sum(referral_bonuses), sum(debts), sum(pending_bonuses),
       sum(pending_referral_bonuses)
from customers group by org_id;
