-- Reads at a million customers (#15, measured by `loadgen scale`): every list an operator pages
-- through answers from one index range in its own order, from an offset or after a row
-- (`?after=` cursors), instead of sorting the whole organization; customer search looks names,
-- usernames and phones up by trigram instead of reading every customer.

-- Trigram matching for `ilike '%…%'`, and plain columns (the organization) in the same GIN index.
-- Both are trusted extensions: the database owner may create them.
create extension if not exists pg_trgm;
create extension if not exists btree_gin;

-- Receipts, latest change first: of one organization, with or without a status, and of all
-- organizations (the operations view). Ties are broken by organization and event id, which the
-- cursor carries. The (status, updated_at) index of the summary's counts is widened to serve the
-- status-filtered operations view too.
create index receipts_by_org on receipts (org_id, updated_at, event_id);
create index receipts_by_org_status on receipts (org_id, status, updated_at, event_id);
create index receipts_by_time on receipts (updated_at, org_id, event_id);
drop index receipts_by_status;
create index receipts_by_status on receipts (status, updated_at, org_id, event_id);

-- Notifications, newest first by id: of one organization, with or without a status, and of all
-- organizations by status (all of them without a status: the primary key).
create index outbox_by_org on outbox (org_id, id);
create index outbox_by_org_status on outbox (org_id, status, id);
create index outbox_by_status_id on outbox (status, id);

-- Customer search (`q`): part of the name ("first last"), of the username, or of the phone's digits.
create index customers_name_trgm on customers
    using gin (org_id, (coalesce(first_name, '') || ' ' || coalesce(last_name, '')) gin_trgm_ops);
create index customers_username_trgm on customers using gin (org_id, username gin_trgm_ops);
create index customers_phone_trgm on customers using gin (org_id, phone_number gin_trgm_ops);
