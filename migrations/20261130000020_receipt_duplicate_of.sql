-- A receipt the POS sent again under a new event id keeps a row of its own, 'duplicate', so that
-- operators see every event that arrived; duplicate_of names the event that took effect (the
-- 'processed', 'unmatched' or 'ignored' row with the same receipt_id). Null on every other row,
-- and on a duplicate recorded before this column existed.
alter table receipts add column duplicate_of text;
