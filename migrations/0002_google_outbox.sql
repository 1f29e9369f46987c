-- cosell-sync schema, version 2: the Google side, reconciliation state and the durable outbox.

-- Which Google records belong to which referral (the Google `externalSystemId` is the
-- referral id). One lead and one opportunity at most per referral, and never shared.
CREATE TABLE links (
    referral_id      TEXT PRIMARY KEY,
    lead_name        TEXT UNIQUE,
    opportunity_name TEXT UNIQUE,
    source           TEXT NOT NULL,      -- 'created' (by this daemon) or 'operator' (`link`)
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);

-- The last copy of each tracked Google record, raw JSON kept.
CREATE TABLE google_leads (
    name               TEXT PRIMARY KEY,
    referral_id        TEXT,
    external_system_id TEXT,
    lead_status        TEXT,
    approval_status    TEXT,
    raw_json           TEXT NOT NULL,
    fetched_at         TEXT NOT NULL
);

CREATE TABLE google_opportunities (
    name               TEXT PRIMARY KEY,
    referral_id        TEXT,
    external_system_id TEXT,
    sales_stage        TEXT,
    deal_size          REAL,
    close_date         TEXT,
    raw_json           TEXT NOT NULL,
    fetched_at         TEXT NOT NULL
);

-- The field values both sides agreed on at the last successful sync: the base of the
-- three-way merge. No row = empty base (first sync after linking).
CREATE TABLE field_base (
    referral_id TEXT PRIMARY KEY,
    deal_value  REAL,
    close_date  TEXT,
    updated_at  TEXT NOT NULL
);

-- Remote writes to make, stored in the same transaction as the state that produced them.
-- state: pending → in_flight → done | dead | quarantined (unknown outcome of a create);
-- dropped (by the operator) and superseded (re-planned after a 412) are closed too.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    referral_id     TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('create_lead', 'patch_referral', 'patch_opportunity')),
    target          TEXT,                -- the resource written (opportunity name, referral id)
    payload         TEXT NOT NULL,       -- JSON: the body, mask or ops, and the base to record
    state           TEXT NOT NULL CHECK (state IN ('pending', 'in_flight', 'done', 'dead',
                                                   'quarantined', 'dropped', 'superseded')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT,
    request_id      TEXT,
    result          TEXT,                -- e.g. the created lead's name
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
-- No referral ever gets two lead creates: any create not dropped by the operator blocks another.
CREATE UNIQUE INDEX outbox_one_create ON outbox (referral_id)
    WHERE kind = 'create_lead' AND state <> 'dropped';
-- At most one open write of each kind per referral.
CREATE UNIQUE INDEX outbox_one_open ON outbox (referral_id, kind)
    WHERE state IN ('pending', 'in_flight');
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX outbox_by_referral ON outbox (referral_id, kind, state);

-- Conflicts the `manual` policy left for a person: both sides changed a field differently.
CREATE TABLE conflicts (
    referral_id     TEXT NOT NULL,
    field           TEXT NOT NULL,
    microsoft_value TEXT,
    google_value    TEXT,
    base_value      TEXT,
    detected_at     TEXT NOT NULL,
    PRIMARY KEY (referral_id, field)
);

-- Referrals the forward rules chose but that cannot make a valid lead, and why.
CREATE TABLE forward_blocked (
    referral_id TEXT PRIMARY KEY,
    reason      TEXT NOT NULL,
    detected_at TEXT NOT NULL
);

-- What each cycle pushed.
ALTER TABLE cycle_runs ADD COLUMN actions_done INTEGER NOT NULL DEFAULT 0;
ALTER TABLE cycle_runs ADD COLUMN actions_failed INTEGER NOT NULL DEFAULT 0;
