-- cosell-sync schema, version 8: answering referrals (accept / decline) through the outbox.

-- A new action kind, `answer_referral`. SQLite cannot change a CHECK constraint in place, so
-- the outbox is rebuilt with the same columns, rows, ids and indexes.
CREATE TABLE outbox_v7 (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    referral_id     TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('create_lead', 'patch_referral',
                                                  'patch_opportunity', 'answer_referral')),
    target          TEXT,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'in_flight', 'done', 'dead',
                                                   'quarantined', 'dropped', 'superseded')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT,
    request_id      TEXT,
    result          TEXT,                -- an answer's outcome, as JSON (see sync::answer)
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
INSERT INTO outbox_v7 SELECT id, referral_id, kind, target, payload, state, attempts,
    next_attempt_at, last_error, request_id, result, created_at, updated_at FROM outbox;
-- Ids keep counting from where they were (an id is never reused, even one deleted before).
DELETE FROM sqlite_sequence WHERE name = 'outbox_v7';
INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox_v7', seq FROM sqlite_sequence WHERE name = 'outbox';
DROP TABLE outbox;
ALTER TABLE outbox_v7 RENAME TO outbox;
CREATE UNIQUE INDEX outbox_one_create ON outbox (referral_id)
    WHERE kind = 'create_lead' AND state <> 'dropped';
-- At most one open write of each kind per referral: a double click queues one answer.
CREATE UNIQUE INDEX outbox_one_open ON outbox (referral_id, kind)
    WHERE state IN ('pending', 'in_flight');
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX outbox_by_referral ON outbox (referral_id, kind, state);

-- Who asked for a write: the person behind an accept or decline (`cli:USER`, the SSO
-- header's value, or `link`). Empty for the daemon's own writes.
ALTER TABLE audit_log ADD COLUMN actor TEXT;
