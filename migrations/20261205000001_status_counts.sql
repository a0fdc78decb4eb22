-- The operations summary's counts by status at any day's volume (#15): how many receipts and
-- notifications reached each status in the last minute, hour and day (by the time of their last
-- change) were counted from the rows changed that day, one index entry each: 21 ms for 12 659
-- changes, seconds for a million. They are now kept as the rows change, in two tables:
--
--  * `status_changes`, a log only ever appended to by the transactions that change `receipts` or
--    `outbox`: one row per (organization, status, second of `updated_at`) a statement touched, +n
--    for the rows that entered it and -n for those that left it. Appending takes no lock another
--    transaction waits for, so receipts applied at the same time never queue on a counter, and a
--    rolled-back transaction's rows go with it.
--  * `status_counts`, the log folded (`loyalty::status_counts::compact`, run by the workers every
--    second): one row per (organization, status, second) for the last minute or two, per
--    (organization, status, minute) before that, and besides per (organization, status, hour);
--    the same rows for all organizations together (`org_id` null).
--
-- The summary adds up, in one statement (one snapshot: a fold moves rows from one table to the
-- other in one transaction, so each change counts once), the seconds and minutes of the last hour,
-- the day's whole hours, the minutes of the day's first part-hour, and whatever `status_changes`
-- still holds: some 250 rows per status, however busy the day. What is counted is what the old
-- query counted, each row where its status and its `updated_at` now put it; the hour and the day
-- are counted by whole minutes (a minute that began before the window's start is left out).

create table status_changes (
    org_id bigint not null,
    kind text not null check (kind in ('receipts', 'notifications')),
    status text not null,
    -- The second of `updated_at` the rows changed at.
    at timestamptz not null,
    n integer not null
);
-- Read whole (it holds the changes since the last fold) and emptied by the fold.
alter table status_changes set (autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_scale_factor = 0);

create table status_counts (
    -- Null: every organization together.
    org_id bigint,
    kind text not null check (kind in ('receipts', 'notifications')),
    -- Seconds the row counts: 1, 60 or 3 600 from `at`, the start of that second, minute or
    -- hour (hours in UTC).
    span integer not null check (span in (1, 60, 3600)),
    at timestamptz not null,
    status text not null,
    n bigint not null,
    constraint status_counts_key unique nulls not distinct (org_id, kind, span, at, status)
);

-- Appends what one statement changed in `receipts` or `outbox` (the trigger's argument names which):
-- +n per (organization, status, second) for the rows that entered it, -n for the rows that left it.
-- An update's rows that kept their organization, status and second cancel out and write nothing;
-- changes older than a day never count, so they are not written. One set-based insert per
-- statement: a worker's batch of 250 receipts is a few rows here, not 250 trigger calls.
create function log_status_changes() returns trigger language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        insert into status_changes (org_id, kind, status, at, n)
        select org_id, tg_argv[0], status, date_trunc('second', updated_at), count(*)
        from entered where updated_at > now() - interval '25 hours'
        group by 1, 3, 4;
    elsif tg_op = 'DELETE' then
        insert into status_changes (org_id, kind, status, at, n)
        select org_id, tg_argv[0], status, date_trunc('second', updated_at), -count(*)
        from departed where updated_at > now() - interval '25 hours'
        group by 1, 3, 4;
    else
        insert into status_changes (org_id, kind, status, at, n)
        select org_id, tg_argv[0], status, at, sum(n)
        from (select org_id, status, date_trunc('second', updated_at) as at, 1 as n
              from entered where updated_at > now() - interval '25 hours'
              union all
              select org_id, status, date_trunc('second', updated_at), -1
              from departed where updated_at > now() - interval '25 hours') changed
        group by 1, 3, 4
        having sum(n) <> 0;
    end if;
    return null;
end $$;

-- Three triggers per table (receipts_status_insert, _update, _delete; outbox_status_…), each
-- with the transition tables its event has.
do $$
declare
    counted record;
    event record;
begin
    for counted in select * from (values ('receipts', 'receipts'), ('outbox', 'notifications')) as t (tbl, kind) loop
        for event in select * from (values ('insert', 'new table as entered'),
                                           ('update', 'old table as departed new table as entered'),
                                           ('delete', 'old table as departed')) as e (name, tables) loop
            execute format('create trigger %I after %s on %I referencing %s for each statement
                            execute function log_status_changes(%L)',
                           counted.tbl || '_status_' || event.name, event.name, counted.tbl,
                           event.tables, counted.kind);
        end loop;
    end loop;
end $$;

-- Counts the day again from the rows themselves: what the migration does once (below), and what a
-- bulk load that ran without triggers (`loadgen scale`'s fill) or an operator who doubts the counts
-- runs (`loyalty::status_counts::recount`, which folds right after). The counts and the log are
-- emptied and the log is written anew from the rows, as if each row had just been logged; the next
-- fold folds it (until then the summary reads it, right but slower). Writers of receipts and
-- notifications wait for the calling transaction (share locks), and so does the fold (its advisory
-- lock, the key of `loyalty::status_counts::FOLD_LOCK`), so no change is lost or counted twice.
create function recount_status_counts() returns void language plpgsql as $$
begin
    lock table receipts, outbox in share mode;
    perform pg_advisory_xact_lock(7813597337849461062);
    delete from status_changes;
    delete from status_counts;
    insert into status_changes (org_id, kind, status, at, n)
    select org_id, kind, status, date_trunc('second', updated_at), count(*)
    from (select org_id, 'receipts' as kind, status, updated_at from receipts
          where updated_at > now() - interval '25 hours'
          union all
          select org_id, 'notifications', status, updated_at from outbox
          where updated_at > now() - interval '25 hours') changed
    group by 1, 2, 3, 4;
end $$;

-- The day's changes so far, after the triggers exist: creating them locked both tables against
-- writes until this migration commits, so no change falls between the count and the triggers.
select recount_status_counts();
