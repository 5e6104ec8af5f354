-- Push tokens (issue 10), PostgreSQL flavour. Keep in step with
-- ../sqlite/0003_push_tokens.sql: the application runs the same queries on both.

-- At most one push token per device, and a token belongs to at most one
-- device (it moves with the app's data to whichever device registers it
-- last). `endpoint` is the push service's name for the token (an SNS
-- platform endpoint ARN). A token is dead (dead = 1) once the service
-- said its endpoint is disabled (app uninstalled, token expired): no
-- pushes until the device registers a token again. The row goes with its
-- device.
CREATE TABLE push_tokens (
    user_id    BIGINT NOT NULL,
    device_id  BIGINT NOT NULL,
    platform   TEXT    NOT NULL,
    token      TEXT    NOT NULL,
    endpoint   TEXT    NOT NULL,
    dead       BIGINT NOT NULL CHECK (dead IN (0, 1)),
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX push_tokens_token ON push_tokens (platform, token);
