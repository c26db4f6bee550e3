-- Usage measured elsewhere and ingested (UsageService/IngestUsage): one row
-- per record, unique per project and idempotency key, so that a record sent
-- twice counts once.
CREATE TABLE usage_records (
    project_id      TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    metric          TEXT NOT NULL,
    quantity        BIGINT NOT NULL,
    used_at         BIGINT NOT NULL,
    recorded_at     BIGINT NOT NULL,
    PRIMARY KEY (project_id, idempotency_key)
);
CREATE INDEX usage_records_period ON usage_records (project_id, used_at);
