-- Foundation: settings, tenancy, tokens, join tokens, nodes, the event log.
-- Times are Unix milliseconds. JSON columns hold serde_json text.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

CREATE TABLE organizations (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE projects (
    id         TEXT PRIMARY KEY,
    org_id     TEXT NOT NULL REFERENCES organizations (id),
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects (id),
    role        TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);

CREATE TABLE join_tokens (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects (id),
    secret_hash BYTEA NOT NULL,
    description TEXT NOT NULL,
    labels      TEXT NOT NULL,
    max_uses    BIGINT NOT NULL,
    uses        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX join_tokens_project ON join_tokens (project_id, created_at);

CREATE TABLE nodes (
    id                    TEXT PRIMARY KEY,
    project_id            TEXT NOT NULL REFERENCES projects (id),
    status                TEXT NOT NULL,
    desired_state         TEXT NOT NULL,
    desired_state_version BIGINT NOT NULL,
    capabilities          TEXT NOT NULL,
    labels                TEXT NOT NULL,
    pool                  TEXT NOT NULL,
    registered_at         BIGINT NOT NULL,
    status_changed_at     BIGINT NOT NULL,
    last_seen_at          BIGINT NOT NULL,
    lease_replica         TEXT NOT NULL,
    session_generation    BIGINT NOT NULL,
    join_token_id         TEXT,
    public_key            BYTEA NOT NULL
);
CREATE INDEX nodes_project_order ON nodes (project_id, registered_at, id);

CREATE TABLE events (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         BIGINT NOT NULL,
    project_id TEXT,
    kind       TEXT NOT NULL,
    subject    TEXT NOT NULL,
    payload    TEXT NOT NULL
);
CREATE INDEX events_project_seq ON events (project_id, seq);
