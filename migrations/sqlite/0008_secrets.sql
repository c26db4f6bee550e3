-- Sealed secrets. A version's row is metadata only; its value exists only
-- as copies, each sealed to one node's X25519 key (HPKE). A deleted version
-- keeps its row (deleted_at) so that its number is never reused, and loses
-- its copies.
CREATE TABLE secrets (
    project_id TEXT NOT NULL REFERENCES projects (id),
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    deleted_at INTEGER,
    PRIMARY KEY (project_id, name, version)
);

CREATE TABLE secret_copies (
    project_id TEXT NOT NULL,
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    node_id    TEXT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    -- The key it was sealed to: a node that changed its key needs a new copy.
    public_key BLOB NOT NULL,
    enc        BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (project_id, name, version, node_id),
    FOREIGN KEY (project_id, name, version) REFERENCES secrets (project_id, name, version) ON DELETE CASCADE
);

CREATE INDEX secret_copies_node ON secret_copies (node_id);
