-- How fast the partner answers referrals (issue 19). One row per incoming referral the daemon
-- saw while it waited for an answer (status New), settled once with how it ended, so each
-- answer or expiry is counted once, also across restarts.
CREATE TABLE referral_responses (
    referral_id TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL,          -- the referral's createdDateTime
    outcome     TEXT CHECK (outcome IN ('accepted', 'declined', 'expired', 'closed')),
    -- accepted/declined: Partner Center's updatedDateTime when first seen answered;
    -- expired: the deadline. NULL while open.
    settled_at  TEXT,
    seconds     INTEGER                  -- settled_at - created_at
);
CREATE INDEX referral_responses_open ON referral_responses (outcome, settled_at);
