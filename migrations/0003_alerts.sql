-- cosell-sync schema, version 3: alerts, their delivery per sink, and health episodes.

-- Every alert raised, once: the id is the stable dedupe key (e.g. referral_expiring:ID:24h).
CREATE TABLE alerts (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    severity    TEXT NOT NULL,
    referral_id TEXT,
    payload     TEXT NOT NULL,      -- the JSON alert as every sink receives it
    created_at  TEXT NOT NULL
);
CREATE INDEX alerts_by_time ON alerts (created_at);

-- Delivery of each alert to each sink configured when it was raised. Recorded before the
-- first attempt; `delivered` is final, so a restart never sends a delivered alert again.
CREATE TABLE alert_deliveries (
    alert_id     TEXT NOT NULL REFERENCES alerts (id),
    sink         TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'delivered')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    delivered_at TEXT,
    PRIMARY KEY (alert_id, sink)
);
CREATE INDEX deliveries_pending ON alert_deliveries (state, alert_id);

-- Small named facts that outlive a process: failing-cycle counters, open episodes.
CREATE TABLE health (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
