-- Parley registration schema, PostgreSQL flavour. Keep in step with
-- ../sqlite/0001_init.sql: the application runs the same queries on both.
-- Times are unix milliseconds (BIGINT); ids are random positive 63-bit.

-- One row per registered phone number. `device_id` and `generation` are the
-- account's one current device; re-registration replaces both, which revokes
-- every token naming the old pair.
CREATE TABLE accounts (
    user_id    BIGINT PRIMARY KEY,
    phone      TEXT   NOT NULL UNIQUE,
    device_id  BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- At most one live code per number: a new request replaces it. The row is
-- also the per-number lock that serialises code requests and verifications.
-- Only a hash of the code is kept.
CREATE TABLE pending_codes (
    phone         TEXT   PRIMARY KEY,
    code_hash     BYTEA  NOT NULL,
    expires_at    BIGINT NOT NULL,
    attempts_left BIGINT NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE INDEX pending_codes_expires_at ON pending_codes (expires_at);

-- Codes sent per number, for the per-interval and per-24-hours limits. Rows
-- older than 24 hours are pruned.
CREATE TABLE code_requests (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    phone        TEXT   NOT NULL,
    requested_at BIGINT NOT NULL
);
CREATE INDEX code_requests_phone_time ON code_requests (phone, requested_at);
CREATE INDEX code_requests_time ON code_requests (requested_at);
