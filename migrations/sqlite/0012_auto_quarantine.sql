-- Nodes held by automatic quarantine (the quarantine loop): the desired
-- state version it set, so that it releases only a quarantine no operator
-- has changed since.
CREATE TABLE node_auto_quarantines (
    node_id         TEXT PRIMARY KEY REFERENCES nodes (id) ON DELETE CASCADE,
    org_id          TEXT NOT NULL,
    desired_version BIGINT NOT NULL,
    quarantined_at  BIGINT NOT NULL
);
