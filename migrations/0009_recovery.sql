-- cosell-sync schema, version 9: recovery from Partner Center and retention (issue 15).

-- The outbox gains a kind, `adopt_link`: a referral whose externalReferenceId names a Google
-- record of this partner that the database does not link is adopted (GET, check its
-- externalSystemId, link) instead of getting a create. SQLite cannot alter a CHECK, so the
-- table is rebuilt; the kind is no longer checked here (the code decodes every row and reports
-- one it cannot read), so a later kind needs no rebuild. Ids keep counting from where they
-- were (the sequence is carried over, and follows the rename): an id is never reused, even after
-- retention deletes old rows, so an alert keyed on an action id can never collide.
CREATE TABLE outbox_v9 (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    referral_id     TEXT NOT NULL,
    kind            TEXT NOT NULL,
    target          TEXT,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'in_flight', 'done', 'dead',
                                                   'quarantined', 'dropped', 'superseded')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT,
    request_id      TEXT,
    result          TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
INSERT INTO outbox_v9 SELECT * FROM outbox;
DELETE FROM sqlite_sequence WHERE name = 'outbox_v9';
INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox_v9', seq FROM sqlite_sequence WHERE name = 'outbox';
DROP TABLE outbox;
ALTER TABLE outbox_v9 RENAME TO outbox;
CREATE UNIQUE INDEX outbox_one_create ON outbox (referral_id)
    WHERE kind = 'create_lead' AND state <> 'dropped';
CREATE UNIQUE INDEX outbox_one_open ON outbox (referral_id, kind)
    WHERE state IN ('pending', 'in_flight');
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX outbox_by_referral ON outbox (referral_id, kind, state);
-- One adoption per referral and named record, ever (unless the operator drops it): a name
-- that does not resolve is tried once and alerted, not tried again every plan.
CREATE UNIQUE INDEX outbox_one_adopt ON outbox (referral_id, target)
    WHERE kind = 'adopt_link' AND state <> 'dropped';
-- Retention deletes finished rows by age.
CREATE INDEX outbox_finished ON outbox (updated_at) WHERE state IN ('done', 'superseded', 'dropped');

-- Retention reads these by age.
CREATE INDEX cycle_runs_by_start ON cycle_runs (started_at);
CREATE INDEX audit_by_time ON audit_log (at);
CREATE INDEX webhook_events_by_time ON webhook_events (received_at);
