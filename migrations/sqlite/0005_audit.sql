-- Audit: who made each change. The principal is a token id, an access key
-- id, a node id or a join token id; NULL for the control plane's own work
-- (liveness, the scheduler, reconcilers). The role is what the principal had
-- for the call: viewer .. admin, org-viewer, org-admin, platform-admin,
-- agent, join-token.
ALTER TABLE events ADD COLUMN principal TEXT;
ALTER TABLE events ADD COLUMN principal_role TEXT;
CREATE INDEX events_principal_seq ON events (principal, seq);
