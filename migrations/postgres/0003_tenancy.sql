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
ALTER TABLE organizations ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;
-- Set once deleted; the name is then freed (see the store).
ALTER TABLE organizations ADD COLUMN deleted_at BIGINT;
UPDATE organizations SET updated_at = created_at;

ALTER TABLE projects ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE projects ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE projects ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE projects ADD COLUMN deleted_at BIGINT;
-- NULL is unlimited.
ALTER TABLE projects ADD COLUMN quota_cpu_millis BIGINT;
ALTER TABLE projects ADD COLUMN quota_memory_mb BIGINT;
ALTER TABLE projects ADD COLUMN quota_gpus BIGINT;
ALTER TABLE projects ADD COLUMN quota_allocations BIGINT;
UPDATE projects SET updated_at = created_at;

CREATE TABLE pool_grants (
    org_id     TEXT NOT NULL REFERENCES organizations (id),
    pool       TEXT NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects (id),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, pool, project_id)
);

-- Tokens: project tokens have a project; organisation tokens an org_role
-- and no project; the platform administrator's neither.
ALTER TABLE tokens ADD COLUMN org_id TEXT REFERENCES organizations (id);
ALTER TABLE tokens ADD COLUMN org_role TEXT;
ALTER TABLE tokens ALTER COLUMN project_id DROP NOT NULL;
UPDATE tokens SET org_id = (SELECT org_id FROM projects WHERE projects.id = tokens.project_id);
CREATE INDEX tokens_project ON tokens (project_id, created_at);
CREATE INDEX tokens_org ON tokens (org_id, created_at);

ALTER TABLE join_tokens ADD COLUMN org_id TEXT REFERENCES organizations (id);
ALTER TABLE join_tokens ADD COLUMN pool TEXT NOT NULL DEFAULT 'default';
UPDATE join_tokens SET org_id = (SELECT org_id FROM projects WHERE projects.id = join_tokens.project_id);
ALTER TABLE join_tokens ALTER COLUMN org_id SET NOT NULL;
ALTER TABLE join_tokens ALTER COLUMN project_id DROP NOT NULL;
UPDATE join_tokens SET project_id = NULL;
CREATE INDEX join_tokens_org ON join_tokens (org_id, created_at);

INSERT INTO pool_grants (org_id, pool, project_id, created_at)
    SELECT DISTINCT p.org_id, CASE WHEN n.pool = '' THEN 'default' ELSE n.pool END, p.id, p.created_at
    FROM nodes n JOIN projects p ON p.id = n.project_id;
INSERT INTO pool_grants (org_id, pool, project_id, created_at)
    SELECT org_id, 'default', id, created_at FROM projects
    ON CONFLICT DO NOTHING;

ALTER TABLE nodes ADD COLUMN org_id TEXT REFERENCES organizations (id);
UPDATE nodes SET org_id = (SELECT org_id FROM projects WHERE projects.id = nodes.project_id);
ALTER TABLE nodes ALTER COLUMN org_id SET NOT NULL;
ALTER TABLE nodes ALTER COLUMN project_id DROP NOT NULL;
UPDATE nodes SET project_id = NULL, pool = CASE WHEN pool = '' THEN 'default' ELSE pool END;
CREATE INDEX nodes_org_order ON nodes (org_id, registered_at, id);

-- Events about an organisation's nodes, pools and grants carry its id, so
-- that its projects' and its admins' watches find them.
ALTER TABLE events ADD COLUMN org_id TEXT;
UPDATE events SET org_id = (SELECT org_id FROM projects WHERE projects.id = events.project_id);
UPDATE events SET project_id = NULL WHERE kind LIKE 'node.%';
CREATE INDEX events_org_seq ON events (org_id, seq);
