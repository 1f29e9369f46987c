-- cosell-sync schema, version 4: the deadline lane and the refresh lane (issue "deadline first").

-- When each tracked Google record is read again. The refresh lane reads records whose
-- next_check_at has passed, under an hourly budget; a record that changed is read again soon,
-- one that did not is read less and less often (interval_s doubles up to a cap). A record that
-- can no longer matter (final lead, final-stage opportunity, Closed referral) has
-- next_check_at NULL and is never read again.
CREATE TABLE refresh_schedule (
    name            TEXT PRIMARY KEY,    -- partners/P/leads/L or partners/P/opportunities/O
    referral_id     TEXT NOT NULL,
    next_check_at   TEXT,                -- NULL = final, never re-read
    interval_s      INTEGER NOT NULL DEFAULT 0,
    last_checked_at TEXT,
    last_changed_at TEXT,
    failures        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX refresh_due ON refresh_schedule (next_check_at) WHERE next_check_at IS NOT NULL;

-- Every Google read the refresh lane made in the last hour: the budget is counted here, so it
-- holds across restarts and for one-shot `sync` runs alike.
CREATE TABLE refresh_reads (at TEXT NOT NULL);
CREATE INDEX refresh_reads_at ON refresh_reads (at);

-- Referrals whose inputs changed since they were last planned (a new or changed referral, a
-- changed Google record, a new link, an operator's outbox change). The deadline lane plans
-- only these; a full plan runs at start-up, on `sync` and periodically as a safety net.
CREATE TABLE plan_queue (
    referral_id TEXT PRIMARY KEY,
    queued_at   TEXT NOT NULL
);

-- Records tracked before this version are due at once (spread by the budget), and every
-- referral is planned once.
INSERT INTO refresh_schedule (name, referral_id, next_check_at)
    SELECT lead_name, referral_id, strftime('%Y-%m-%dT%H:%M:%fZ', 'now') FROM links WHERE lead_name IS NOT NULL;
INSERT OR IGNORE INTO refresh_schedule (name, referral_id, next_check_at)
    SELECT opportunity_name, referral_id, strftime('%Y-%m-%dT%H:%M:%fZ', 'now') FROM links WHERE opportunity_name IS NOT NULL;
INSERT INTO plan_queue (referral_id, queued_at)
    SELECT id, strftime('%Y-%m-%dT%H:%M:%fZ', 'now') FROM referrals;
