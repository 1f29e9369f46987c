-- cosell-sync schema, version 11: the outbox's state rules without IN lists.
--
-- SQLite evaluates `state IN (three or more constants)` by building a temporary b-tree of
-- the constants each time a statement runs. The state CHECK and the predicate of the
-- `outbox_finished` partial index are evaluated by every insert and every state change, so
-- each claim, send and outcome of every action built three such b-trees (about 5 % of a
-- first sync's CPU). The same rules as chains of equalities compile to plain comparisons.
-- SQLite cannot alter a CHECK, so the table is rebuilt as in version 9: same columns, rows,
-- ids (the sequence is carried over) and indexes.
CREATE TABLE outbox_v11 (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    referral_id     TEXT NOT NULL,
    kind            TEXT NOT NULL,
    target          TEXT,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state = 'pending' OR state = 'in_flight' OR state = 'done'
                                         OR state = 'dead' OR state = 'quarantined'
                                         OR state = 'dropped' OR state = 'superseded'),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT,
    request_id      TEXT,
    result          TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
INSERT INTO outbox_v11 SELECT * FROM outbox;
DELETE FROM sqlite_sequence WHERE name = 'outbox_v11';
INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox_v11', seq FROM sqlite_sequence WHERE name = 'outbox';
DROP TABLE outbox;
ALTER TABLE outbox_v11 RENAME TO outbox;
CREATE UNIQUE INDEX outbox_one_create ON outbox (referral_id)
    WHERE kind = 'create_lead' AND state <> 'dropped';
-- Two constants compile to comparisons already.
CREATE UNIQUE INDEX outbox_one_open ON outbox (referral_id, kind)
    WHERE state IN ('pending', 'in_flight');
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX outbox_by_referral ON outbox (referral_id, kind, state);
CREATE UNIQUE INDEX outbox_one_adopt ON outbox (referral_id, target)
    WHERE kind = 'adopt_link' AND state <> 'dropped';
-- Retention deletes finished rows by age (its query names this index and repeats the
-- predicate word for word, which is how SQLite matches a partial index).
CREATE INDEX outbox_finished ON outbox (updated_at)
    WHERE state = 'done' OR state = 'superseded' OR state = 'dropped';
CREATE INDEX outbox_answers_due ON outbox (next_attempt_at)
    WHERE state = 'pending' AND kind = 'answer_referral';
