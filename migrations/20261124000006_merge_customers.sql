-- Merging a phone-only customer into their Mini App twin moves the ledger entries to the survivor.
-- Entries stay append-only: the one change allowed is the owner, and only inside a merge
-- transaction (`set local loyalty.merge = 'on'`); amounts, kinds, texts and times never change.
create or replace function refuse_ledger_rewrite() returns trigger language plpgsql as $$
begin
    if tg_op = 'UPDATE' and current_setting('loyalty.merge', true) = 'on'
       and (new.seq, new.org_id, new.wallet, new.kind, new.amount, new.description, new.source, new.source_ref,
            new.transaction_type, new.occurred_at, new.utc_offset_seconds, new.legacy_position, new.created_at)
           is not distinct from
           (old.seq, old.org_id, old.wallet, old.kind, old.amount, old.description, old.source, old.source_ref,
            old.transaction_type, old.occurred_at, old.utc_offset_seconds, old.legacy_position, old.created_at)
    then
        return new;
    end if;
    raise exception 'ledger entries are append-only; post a correcting entry instead';
end $$;

-- The customer a merged one now lives on as; a merged customer holds nothing.
alter table customers add column merged_into bigint;
