-- The real documents reproduced exactly (#11): numbers as they were written, texts as they were
-- stored, the legacy export's own order, and bills under the ids of the shop's accounting system.

-- Amounts written here carry no trailing zeros (`350`, not `350.00`); imported ones keep the
-- decimals the legacy export wrote them with (`384.0`), so an imported balance exports as it was.
create function exact_ledger_amount() returns trigger language plpgsql as $$
begin
    if new.source <> 'import' then
        new.amount := trim_scale(new.amount);
    end if;
    return new;
end $$;

create trigger ledger_entries_exact before insert on ledger_entries
    for each row execute function exact_ledger_amount();

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
    else
        update customers set debts = case when keep then debts + delta else trim_scale(debts + delta) end
        where org_id = new.org_id and id = new.customer_id;
    end if;
    return new;
end $$;

-- The local text of `visited_at`, written when the visit is: changing the organization's zone later
-- does not rewrite it. Imported customers bring their own.
alter table customers add column visited_at_str text;
update customers c set visited_at_str = to_char(c.visited_at at time zone o.time_zone, 'YYYY-MM-DD HH24:MI:SS')
from organizations o where o.id = c.org_id and c.visited_at is not null;

create function customer_visit_text() returns trigger language plpgsql as $$
begin
    if new.visited_at is null then
        new.visited_at_str := null;
    elsif new.visited_at_str is null
        or (tg_op = 'UPDATE' and new.visited_at is distinct from old.visited_at
            and new.visited_at_str is not distinct from old.visited_at_str) then
        new.visited_at_str := to_char(
            new.visited_at at time zone (select time_zone from organizations where id = new.org_id),
            'YYYY-MM-DD HH24:MI:SS');
    end if;
    return new;
end $$;

create trigger customers_visit_text before insert or update of visited_at, visited_at_str on customers
    for each row execute function customer_visit_text();

-- An imported customer's place in the export, and its `combined_history` exactly as imported (JSON
-- text; null when the export had none): the export shows it as it was, plus what happened since.
alter table customers add column legacy_position integer;
alter table customers add column legacy_combined_history text;

-- An imported invoice as the export wrote it, key order and number texts included (jsonb keeps
-- neither).
alter table invoices add column legacy_text text;

-- A bill's id may be the shop's own (its accounting system's, which its registers hold), so ids are
-- unique per organization, not across them.
alter table bills drop constraint bills_pkey, add constraint bills_pkey primary key (org_id, id);
