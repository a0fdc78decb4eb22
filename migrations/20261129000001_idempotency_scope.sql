-- An Idempotency-Key is the client's name for one request in one place, so it is scoped to the
-- organization (0 for the routes outside any: creating one, the legacy import) and the route
-- (method and path template): two organizations, or two routes, using the same key get two
-- independent effects instead of a 422. Keys stored before were global; they keep an empty route
-- and so match no new request (a retry sent across this upgrade is applied as a new request).
alter table idempotency_keys
    drop constraint idempotency_keys_pkey,
    add column org_id bigint not null default 0,
    add column route text not null default '';
alter table idempotency_keys
    alter column org_id drop default,
    alter column route drop default,
    add primary key (org_id, route, key);
