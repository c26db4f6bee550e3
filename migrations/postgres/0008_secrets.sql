-- Sealed secrets. A version's row is metadata only; its value exists only
-- as copies, each sealed to one node's X25519 key (HPKE). A deleted version
-- keeps its row (deleted_at) so that its number is never reused, and loses
-- its copies.
CREATE TABLE secrets (
    project_id TEXT NOT NULL REFERENCES projects (id),
    name       TEXT NOT NULL,
    version    BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    deleted_at BIGINT,
    PRIMARY KEY (project_id, name, version)
);

CREATE TABLE secret_copies (
    project_id TEXT NOT NULL,
    name       TEXT NOT NULL,
    version    BIGINT NOT NULL,
    node_id    TEXT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    -- The key it was sealed to: a node that changed its key needs a new copy.
    public_key BYTEA NOT NULL,
    enc        BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (project_id, name, version, node_id),
    FOREIGN KEY (project_id, name, version) REFERENCES secrets (project_id, name, version) ON DELETE CASCADE
);

CREATE INDEX secret_copies_node ON secret_copies (node_id);
