-- Foundation: settings, tenancy, tokens, join tokens, nodes, the event log.
-- Times are Unix milliseconds. JSON columns hold serde_json text.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

CREATE TABLE organizations (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE projects (
    id         TEXT PRIMARY KEY,
    org_id     TEXT NOT NULL REFERENCES organizations (id),
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects (id),
    role        TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
);

CREATE TABLE join_tokens (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects (id),
    secret_hash BLOB NOT NULL,
    description TEXT NOT NULL,
    labels      TEXT NOT NULL,
    max_uses    INTEGER NOT NULL,
    uses        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX join_tokens_project ON join_tokens (project_id, created_at);

CREATE TABLE nodes (
    id                    TEXT PRIMARY KEY,
    project_id            TEXT NOT NULL REFERENCES projects (id),
    status                TEXT NOT NULL,
    desired_state         TEXT NOT NULL,
    desired_state_version INTEGER NOT NULL,
    capabilities          TEXT NOT NULL,
    labels                TEXT NOT NULL,
    pool                  TEXT NOT NULL,
    registered_at         INTEGER NOT NULL,
    status_changed_at     INTEGER NOT NULL,
    last_seen_at          INTEGER NOT NULL,
    lease_replica         TEXT NOT NULL,
    session_generation    INTEGER NOT NULL,
    join_token_id         TEXT,
    public_key            BLOB NOT NULL
);
CREATE INDEX nodes_project_order ON nodes (project_id, registered_at, id);

CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    project_id TEXT,
    kind       TEXT NOT NULL,
    subject    TEXT NOT NULL,
    payload    TEXT NOT NULL
);
CREATE INDEX events_project_seq ON events (project_id, seq);
