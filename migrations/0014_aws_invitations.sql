-- cosell-sync schema, version 14: AWS Partner Central engagement invitations (spec §8) kept
-- in `referrals`, so the alerts, `status`, the service level, triage, the inbox and the action
-- page read them through the same rows as Microsoft's referrals.
--
-- `source` says whose record a row is (microsoft | aws): Microsoft- and Google-only paths
-- (the lead planner, Partner Center re-reads and patches, the triage facts for now) read
-- `source = 'microsoft'` alone. An invitation's id is its `engi-…` id, its raw JSON the
-- `GetEngagementInvitation` answer as received.
--
-- `deadline_estimated`: AWS gave no `ExpirationDate`, so `expires_at` is `InvitationDate` +
-- 15 days (spec §8: shown as estimated). Always 0 for Microsoft rows.
ALTER TABLE referrals ADD COLUMN source TEXT NOT NULL DEFAULT 'microsoft';
ALTER TABLE referrals ADD COLUMN deadline_estimated INTEGER NOT NULL DEFAULT 0;

-- The awaiting reads (every cycle, three times) now read both columns too: the covering
-- index of migration 12 is rebuilt with them, so those reads still never touch the table.
DROP INDEX referrals_awaiting;
CREATE INDEX referrals_awaiting ON referrals (status, substatus, direction, id, created_at,
    expires_at, updated_at, name, customer_name, deal_value, currency, source,
    deadline_estimated);

-- The AWS pull's and alerts' own reads (the invitations still pending, the ones AWS expired
-- lately, the vanished ones) by source first: never a walk over Microsoft's closed referrals.
CREATE INDEX referrals_by_source ON referrals (source, status, substatus, last_changed_at);
