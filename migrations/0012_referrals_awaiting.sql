-- cosell-sync schema, version 12: the referrals whose response clock runs, read from an index.
--
-- Every cycle reads the incoming referrals still New (the expiry alerts, the response-time
-- bookkeeping, the gauge) three times; each read went through the table, whose rows carry
-- the referral's raw JSON (one or two rows per page): a no-change sync of 10,000 referrals read
-- some 30,000 table pages for a few columns. This index holds those columns, so the reads
-- never touch the table; it starts with the columns of `referrals_by_state`, which it replaces.
CREATE INDEX referrals_awaiting ON referrals (status, substatus, direction, id, created_at,
    expires_at, updated_at, name, customer_name, deal_value, currency);
DROP INDEX referrals_by_state;
