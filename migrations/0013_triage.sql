-- cosell-sync schema, version 13: the triage rules' decisions (spec §7).
--
-- One row per referral awaiting an answer, rewritten every cycle with the current rules and
-- referral (a dry-run decision is a preview; a held apply decision is not yet an answer), so
-- `status`, `rules test`, the alerts, the action page and the inbox read one record.
CREATE TABLE triage_decisions (
    referral_id TEXT PRIMARY KEY,
    source      TEXT NOT NULL,          -- microsoft | aws
    rule        TEXT,                   -- the deciding rule; NULL when none matched
    decision    TEXT,                   -- accept | decline | none; NULL when no rule matched
    reason      TEXT,                   -- a decline's statusReason
    mode        TEXT NOT NULL,          -- dry-run | apply, when decided
    state       TEXT NOT NULL,          -- shown | held (apply, over the hourly cap) | queued
    deadline    TEXT NOT NULL,
    decided_at  TEXT NOT NULL
);
CREATE INDEX triage_decisions_by_rule ON triage_decisions (rule, decision, state);

-- Every answer a rule queued, kept past the referral's decision row: the sliding hour of
-- `[triage] max_answers_per_hour` counts these (so the cap holds across restarts), and a
-- referral a rule answered once is never answered by a rule again.
CREATE TABLE triage_answers (
    referral_id TEXT PRIMARY KEY,
    rule        TEXT NOT NULL,
    decision    TEXT NOT NULL,
    outbox_id   INTEGER NOT NULL,
    queued_at   TEXT NOT NULL
);
CREATE INDEX triage_answers_by_time ON triage_answers (queued_at);
