-- Work: jobs, workloads, allocations (job attempts and replicas), job output,
-- and the desired-state bookkeeping of nodes.

ALTER TABLE nodes ADD COLUMN desired_state_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN acked_desired_state_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN desired_state_nack TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN drain_deadline INTEGER;

CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    project_id      TEXT NOT NULL REFERENCES projects (id),
    spec            TEXT NOT NULL,
    labels          TEXT NOT NULL,
    status          TEXT NOT NULL,
    priority        INTEGER NOT NULL,
    max_attempts    INTEGER NOT NULL,
    attempt         INTEGER NOT NULL,
    node_id         TEXT,
    exit_code       INTEGER,
    error           TEXT NOT NULL,
    idempotency_key TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (project_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_status ON jobs (status, priority, created_at);
CREATE INDEX jobs_project ON jobs (project_id, created_at, id);

CREATE TABLE workloads (
    id           TEXT PRIMARY KEY,
    project_id   TEXT NOT NULL REFERENCES projects (id),
    name         TEXT NOT NULL,
    spec         TEXT NOT NULL,
    spec_version INTEGER NOT NULL,
    replicas     INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE allocations (
    key          TEXT PRIMARY KEY,
    project_id   TEXT NOT NULL,
    kind         TEXT NOT NULL,
    job_id       TEXT,
    attempt      INTEGER NOT NULL,
    workload_id  TEXT,
    spec_version INTEGER NOT NULL,
    node_id      TEXT NOT NULL,
    status       TEXT NOT NULL,
    resources    TEXT NOT NULL,
    exit_code    INTEGER,
    error        TEXT NOT NULL,
    restarts     INTEGER NOT NULL,
    scheduled_at INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER
);
CREATE INDEX allocations_node ON allocations (node_id, status);
CREATE INDEX allocations_status ON allocations (status);
CREATE INDEX allocations_job ON allocations (job_id);
CREATE INDEX allocations_workload ON allocations (workload_id, status);

-- Output of each job attempt, in chunks at byte positions within the attempt.
CREATE TABLE job_logs (
    job_id    TEXT NOT NULL,
    attempt   INTEGER NOT NULL,
    pos       INTEGER NOT NULL,
    data      BLOB NOT NULL,
    -- Set on the chunk after which output was cut at the cap.
    truncated INTEGER NOT NULL,
    PRIMARY KEY (job_id, attempt, pos)
);
