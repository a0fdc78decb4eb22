-- A worker claims a batch of receipts by inserting their rows as 'processing' in its transaction;
-- a concurrent delivery of the same event waits on that row and then finds it applied. The status
-- never outlives the transaction: it is replaced before commit.
alter table receipts drop constraint receipts_status_check;
alter table receipts add constraint receipts_status_check
    check (status in ('processing', 'processed', 'duplicate', 'unmatched', 'ignored', 'retrying', 'dead'));
