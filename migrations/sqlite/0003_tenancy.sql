-- Tenancy: organisations own nodes, pools and organisation join tokens;
-- projects own work, tokens and quotas; pools are granted to projects.
--
-- Until now every node and join token belonged to the one project. They
-- move to its organisation: nodes join the pool they were in ("default"
-- when none), join tokens become organisation join tokens into "default",
-- and each project is granted every pool its nodes were in, so that what ran
-- before still places after.

ALTER TABLE organizations ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE organizations ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE organizations ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;
-- Set once deleted; the name is then freed (see the store).
ALTER TABLE organizations ADD COLUMN deleted_at INTEGER;
UPDATE organizations SET updated_at = created_at;

ALTER TABLE projects ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE projects ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE projects ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE projects ADD COLUMN deleted_at INTEGER;
-- NULL is unlimited.
ALTER TABLE projects ADD COLUMN quota_cpu_millis INTEGER;
ALTER TABLE projects ADD COLUMN quota_memory_mb INTEGER;
ALTER TABLE projects ADD COLUMN quota_gpus INTEGER;
ALTER TABLE projects ADD COLUMN quota_allocations INTEGER;
UPDATE projects SET updated_at = created_at;

CREATE TABLE pool_grants (
    org_id     TEXT NOT NULL REFERENCES organizations (id),
    pool       TEXT NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects (id),
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, pool, project_id)
);

-- Tokens: project tokens have a project; organisation tokens an org_role
-- and no project; the platform administrator's neither.
CREATE TABLE tokens_new (
    id          TEXT PRIMARY KEY,
    org_id      TEXT REFERENCES organizations (id),
    project_id  TEXT REFERENCES projects (id),
    role        TEXT NOT NULL,
    org_role    TEXT,
    description TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
);
INSERT INTO tokens_new (id, org_id, project_id, role, org_role, description, created_at, expires_at, revoked_at)
    SELECT t.id, p.org_id, t.project_id, t.role, NULL, t.description, t.created_at, t.expires_at, t.revoked_at
    FROM tokens t JOIN projects p ON p.id = t.project_id;
DROP TABLE tokens;
ALTER TABLE tokens_new RENAME TO tokens;
CREATE INDEX tokens_project ON tokens (project_id, created_at);
CREATE INDEX tokens_org ON tokens (org_id, created_at);

CREATE TABLE join_tokens_new (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organizations (id),
    -- Set for a project join token (dedicated nodes).
    project_id  TEXT REFERENCES projects (id),
    pool        TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    description TEXT NOT NULL,
    labels      TEXT NOT NULL,
    max_uses    INTEGER NOT NULL,
    uses        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
INSERT INTO join_tokens_new (id, org_id, project_id, pool, secret_hash, description, labels, max_uses, uses,
                             created_at, expires_at, revoked_at)
    SELECT j.id, p.org_id, NULL, 'default', j.secret_hash, j.description, j.labels, j.max_uses, j.uses,
           j.created_at, j.expires_at, j.revoked_at
    FROM join_tokens j JOIN projects p ON p.id = j.project_id;
DROP TABLE join_tokens;
ALTER TABLE join_tokens_new RENAME TO join_tokens;
CREATE INDEX join_tokens_project ON join_tokens (project_id, created_at);
CREATE INDEX join_tokens_org ON join_tokens (org_id, created_at);

INSERT INTO pool_grants (org_id, pool, project_id, created_at)
    SELECT DISTINCT p.org_id, CASE WHEN n.pool = '' THEN 'default' ELSE n.pool END, p.id, p.created_at
    FROM nodes n JOIN projects p ON p.id = n.project_id;
INSERT INTO pool_grants (org_id, pool, project_id, created_at)
    SELECT org_id, 'default', id, created_at FROM projects WHERE true
    ON CONFLICT DO NOTHING;

CREATE TABLE nodes_new (
    id                          TEXT PRIMARY KEY,
    org_id                      TEXT NOT NULL REFERENCES organizations (id),
    -- Set for a node dedicated to one project.
    project_id                  TEXT REFERENCES projects (id),
    status                      TEXT NOT NULL,
    desired_state               TEXT NOT NULL,
    desired_state_version       INTEGER NOT NULL,
    capabilities                TEXT NOT NULL,
    labels                      TEXT NOT NULL,
    pool                        TEXT NOT NULL,
    registered_at               INTEGER NOT NULL,
    status_changed_at           INTEGER NOT NULL,
    last_seen_at                INTEGER NOT NULL,
    lease_replica               TEXT NOT NULL,
    session_generation          INTEGER NOT NULL,
    join_token_id               TEXT,
    public_key                  BLOB NOT NULL,
    desired_state_reason        TEXT NOT NULL DEFAULT '',
    acked_desired_state_version INTEGER NOT NULL DEFAULT 0,
    desired_state_nack          TEXT NOT NULL DEFAULT '',
    drain_deadline              INTEGER
);
INSERT INTO nodes_new (id, org_id, project_id, status, desired_state, desired_state_version, capabilities, labels,
                       pool, registered_at, status_changed_at, last_seen_at, lease_replica, session_generation,
                       join_token_id, public_key, desired_state_reason, acked_desired_state_version,
                       desired_state_nack, drain_deadline)
    SELECT n.id, p.org_id, NULL, n.status, n.desired_state, n.desired_state_version, n.capabilities, n.labels,
           CASE WHEN n.pool = '' THEN 'default' ELSE n.pool END, n.registered_at, n.status_changed_at,
           n.last_seen_at, n.lease_replica, n.session_generation, n.join_token_id, n.public_key,
           n.desired_state_reason, n.acked_desired_state_version, n.desired_state_nack, n.drain_deadline
    FROM nodes n JOIN projects p ON p.id = n.project_id;
DROP TABLE nodes;
ALTER TABLE nodes_new RENAME TO nodes;
CREATE INDEX nodes_org_order ON nodes (org_id, registered_at, id);
CREATE INDEX nodes_project_order ON nodes (project_id, registered_at, id);

-- Events about an organisation's nodes, pools and grants carry its id, so
-- that its projects' and its admins' watches find them.
ALTER TABLE events ADD COLUMN org_id TEXT;
UPDATE events SET org_id = (SELECT org_id FROM projects WHERE projects.id = events.project_id);
UPDATE events SET project_id = NULL WHERE kind LIKE 'node.%';
CREATE INDEX events_org_seq ON events (org_id, seq);
