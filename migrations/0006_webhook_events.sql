-- cosell-sync schema, version 6: Partner Center webhook events (issue 12).

-- Every verified event, stored before the receiver answers 200, so a crash after the answer
-- loses nothing. The dedupe key (event name + resource + change time) makes a repeated
-- delivery a no-op. `state`: accepted (stored, not yet forwarded), processed (forwarded),
-- failed (forwarding gave up; polling still covers the referral).
CREATE TABLE webhook_events (
    id           INTEGER PRIMARY KEY,
    dedupe_key   TEXT NOT NULL UNIQUE,
    event_name   TEXT NOT NULL,
    resource_uri TEXT NOT NULL,
    referral_id  TEXT,
    changed_at   TEXT NOT NULL,
    body         TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'accepted'
                 CHECK (state IN ('accepted', 'processed', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    processed_at TEXT,
    -- Milliseconds from receipt to the Google lead create this event led to, when it did.
    lead_ms      INTEGER
);
CREATE INDEX webhook_events_open ON webhook_events (state, id) WHERE state = 'accepted';

-- Counters that outlive the process and that `status` (another process) reads:
-- received, verified, rejected, duplicate.
CREATE TABLE webhook_counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
