-- Access keys: a project's credentials for SigV4-signed REST requests. The
-- secret is never stored: it is derived from the root key named here.
CREATE TABLE access_keys (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL,
    project_id  TEXT NOT NULL,
    role        TEXT NOT NULL,
    description TEXT NOT NULL,
    root_key_id BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX access_keys_project ON access_keys (project_id, created_at);
