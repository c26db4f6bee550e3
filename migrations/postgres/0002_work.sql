-- Work: jobs, workloads, allocations (job attempts and replicas), job output,
-- and the desired-state bookkeeping of nodes.

ALTER TABLE nodes ADD COLUMN desired_state_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN acked_desired_state_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN desired_state_nack TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN drain_deadline BIGINT;

CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    project_id      TEXT NOT NULL REFERENCES projects (id),
    spec            TEXT NOT NULL,
    labels          TEXT NOT NULL,
    status          TEXT NOT NULL,
    priority        BIGINT NOT NULL,
    max_attempts    BIGINT NOT NULL,
    attempt         BIGINT NOT NULL,
    node_id         TEXT,
    exit_code       BIGINT,
    error           TEXT NOT NULL,
    idempotency_key TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (project_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_status ON jobs (status, priority, created_at);
CREATE INDEX jobs_project ON jobs (project_id, created_at, id);

CREATE TABLE workloads (
    id           TEXT PRIMARY KEY,
    project_id   TEXT NOT NULL REFERENCES projects (id),
    name         TEXT NOT NULL,
    spec         TEXT NOT NULL,
    spec_version BIGINT NOT NULL,
    replicas     BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE allocations (
    key          TEXT PRIMARY KEY,
    project_id   TEXT NOT NULL,
    kind         TEXT NOT NULL,
    job_id       TEXT,
    attempt      BIGINT NOT NULL,
    workload_id  TEXT,
    spec_version BIGINT NOT NULL,
    node_id      TEXT NOT NULL,
    status       TEXT NOT NULL,
    resources    TEXT NOT NULL,
    exit_code    BIGINT,
    error        TEXT NOT NULL,
    restarts     BIGINT NOT NULL,
    scheduled_at BIGINT NOT NULL,
    started_at   BIGINT,
    finished_at  BIGINT
);
CREATE INDEX allocations_node ON allocations (node_id, status);
CREATE INDEX allocations_status ON allocations (status);
CREATE INDEX allocations_job ON allocations (job_id);
CREATE INDEX allocations_workload ON allocations (workload_id, status);

-- Output of each job attempt, in chunks at byte positions within the attempt.
CREATE TABLE job_logs (
    job_id    TEXT NOT NULL,
    attempt   BIGINT NOT NULL,
    pos       BIGINT NOT NULL,
    data      BYTEA NOT NULL,
    -- Set on the chunk after which output was cut at the cap.
    truncated BIGINT NOT NULL,
    PRIMARY KEY (job_id, attempt, pos)
);
