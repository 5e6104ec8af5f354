-- Several devices per account (issue 9), PostgreSQL flavour. Keep in step
-- with ../sqlite/0002_devices.sql: the application runs the same queries on
-- both. Flags are BIGINT 0/1 on both backends, so that one query text serves
-- both.

-- Every device of every account: the primary (registered by SMS; exactly
-- one per account) and the linked ones. A device's credential is current
-- while its row exists and the token's generation is the account's.
CREATE TABLE devices (
    user_id      BIGINT NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    device_id    BIGINT NOT NULL,
    name         TEXT   NOT NULL,
    is_primary   BIGINT NOT NULL CHECK (is_primary IN (0, 1)),
    created_at   BIGINT NOT NULL,
    -- When the device last opened (or closed) a session, written at most
    -- once an hour per device; linked devices not seen for a long time are
    -- unlinked by a sweep.
    last_seen_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
CREATE UNIQUE INDEX devices_one_primary ON devices (user_id) WHERE is_primary = 1;
CREATE INDEX devices_linked_last_seen ON devices (last_seen_at) WHERE is_primary = 0;

-- The one device of each account of the one-device release becomes its
-- primary, with the same id: its tokens (generation unchanged) keep working.
INSERT INTO devices (user_id, device_id, name, is_primary, created_at, last_seen_at)
SELECT user_id, device_id, 'Phone', 1, updated_at, updated_at FROM accounts;

-- The devices table is now the only record of an account's devices.
ALTER TABLE accounts DROP COLUMN device_id;

-- At most one unused link code per account (a new one replaces it). The
-- code's id part is the key, so that wrong guesses are counted against the
-- code they name; only a hash of the secret part is kept. `created_by` is
-- the primary that made it: a code outlives no re-registration.
CREATE TABLE link_codes (
    code_id       TEXT   PRIMARY KEY,
    user_id       BIGINT NOT NULL UNIQUE REFERENCES accounts (user_id) ON DELETE CASCADE,
    created_by    BIGINT NOT NULL,
    secret_hash   BYTEA  NOT NULL,
    expires_at    BIGINT NOT NULL,
    attempts_left BIGINT NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE INDEX link_codes_expires_at ON link_codes (expires_at);
