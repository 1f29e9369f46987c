-- cosell-sync schema, version 1: Microsoft referrals, watermarks, cycles, rejected records, audit.
-- Timestamps are RFC 3339 UTC text with 9 fractional digits, so text order is time order.

-- Every referral seen, with the columns the daemon queries on and the raw JSON as received,
-- so a field the API adds later is never lost.
CREATE TABLE referrals (
    id                    TEXT PRIMARY KEY,
    engagement_id         TEXT,
    name                  TEXT,
    customer_name         TEXT,
    customer_country      TEXT,
    status                TEXT,
    substatus             TEXT,
    direction             TEXT,
    qualification         TEXT,
    referral_type         TEXT,
    deal_value            REAL,
    currency              TEXT,
    closing_at            TEXT,
    external_reference_id TEXT,
    etag                  TEXT,
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL,
    expires_at            TEXT,
    raw_json              TEXT NOT NULL,
    first_seen_at         TEXT NOT NULL,
    last_changed_at       TEXT NOT NULL
);
CREATE INDEX referrals_by_state ON referrals (status, substatus);
CREATE INDEX referrals_by_update ON referrals (updated_at);

-- High-water marks of incremental queries. Advanced in the same transaction as the page
-- that justifies them, so a crash can never skip a page.
CREATE TABLE sync_watermarks (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- One row per cycle: when, how it ended, what it saw.
CREATE TABLE cycle_runs (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    cycle_id           TEXT NOT NULL UNIQUE,
    started_at         TEXT NOT NULL,
    finished_at        TEXT,
    outcome            TEXT NOT NULL CHECK (outcome IN ('running', 'ok', 'failed', 'interrupted')),
    pages              INTEGER NOT NULL DEFAULT 0,
    referrals_seen     INTEGER NOT NULL DEFAULT 0,
    referrals_new      INTEGER NOT NULL DEFAULT 0,
    referrals_changed  INTEGER NOT NULL DEFAULT 0,
    records_rejected   INTEGER NOT NULL DEFAULT 0,
    error              TEXT
);

-- Records an API returned that could not be read. Kept (not dropped) so support can see them;
-- one row per distinct payload, with when it was first and last seen.
CREATE TABLE rejected_records (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    source        TEXT NOT NULL,
    record_id     TEXT,
    error         TEXT NOT NULL,
    raw_json      TEXT NOT NULL,
    first_seen_at TEXT NOT NULL,
    last_seen_at  TEXT NOT NULL,
    UNIQUE (source, raw_json)
);

-- Every remote write: when, which API and record, what changed, how it ended, request id.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT NOT NULL,
    cycle_id    TEXT,
    api         TEXT NOT NULL,
    method      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    fields      TEXT,
    outcome     TEXT NOT NULL,
    status_code INTEGER,
    request_id  TEXT,
    detail      TEXT
);
CREATE INDEX audit_by_resource ON audit_log (resource, at);
