-- The one executor takes accepts and declines first (a person waits on the page). Answers are
-- few: this partial index finds a due one without walking every pending create, so the
-- claim query stays an index lookup however long the outbox is.
CREATE INDEX outbox_answers_due ON outbox (next_attempt_at)
    WHERE state = 'pending' AND kind = 'answer_referral';
