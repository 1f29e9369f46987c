-- cosell-sync schema, version 15: answers to AWS engagement invitations (spec §8).
--
-- Two new action kinds, `aws_accept` and `aws_decline`: the one executor takes them first,
-- like `answer_referral` (a person waits on the command, and the invitation's ExpirationDate
-- is what the product is about). The partial index of due answers covers all three; the
-- claim's query repeats this predicate word for word, which is how SQLite matches it. An
-- accept whose AWS task is being followed stays `pending` with its next poll as
-- `next_attempt_at`, so the same index finds it every 5 s.
DROP INDEX outbox_answers_due;
CREATE INDEX outbox_answers_due ON outbox (next_attempt_at)
    WHERE state = 'pending'
      AND (kind = 'answer_referral' OR kind = 'aws_accept' OR kind = 'aws_decline');
