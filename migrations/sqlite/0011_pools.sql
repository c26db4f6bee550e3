-- Pools kept at a desired size (PoolService): the pool's spec (limits,
-- provider, autoscaling) as JSON, its desired count, and each request made
-- to its provider, tracked until fulfilled or failed.
CREATE TABLE pools (
    org_id     TEXT NOT NULL REFERENCES organizations (id),
    name       TEXT NOT NULL,
    spec       TEXT NOT NULL,
    desired    BIGINT NOT NULL,
    version    BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    scaled_at  BIGINT NOT NULL,
    PRIMARY KEY (org_id, name)
);

CREATE TABLE pool_scale_requests (
    id         TEXT PRIMARY KEY,
    org_id     TEXT NOT NULL,
    pool       TEXT NOT NULL,
    action     TEXT NOT NULL,
    count      BIGINT NOT NULL,
    state      TEXT NOT NULL,
    nodes      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deadline   BIGINT NOT NULL,
    FOREIGN KEY (org_id, pool) REFERENCES pools (org_id, name) ON DELETE CASCADE
);

CREATE INDEX pool_scale_requests_by_pool ON pool_scale_requests (org_id, pool, created_at);
CREATE INDEX pool_scale_requests_open ON pool_scale_requests (state) WHERE state IN ('draining', 'requested');
