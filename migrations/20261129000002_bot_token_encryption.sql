-- Bot tokens sealed at rest (AES-256-GCM under a key from TOKEN_KEYS; loyalty/src/crypto.rs):
-- the id of the key that sealed the token, and nonce || ciphertext || tag. A dump of the database
-- alone no longer yields the tokens.
--
-- `telegram_bot_token` (the token in clear) keeps only tokens written before this release, until
-- the first ingest started with TOKEN_KEYS seals them and clears it; nothing writes it any more.
alter table organizations
    add column telegram_bot_token_key text,
    add column telegram_bot_token_sealed bytea,
    add constraint bot_token_sealed_with_its_key
        check ((telegram_bot_token_key is null) = (telegram_bot_token_sealed is null)),
    add constraint bot_token_stored_once
        check (telegram_bot_token is null or telegram_bot_token_sealed is null);
