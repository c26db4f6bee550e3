-- HTTP agents: nodes that post HMAC-signed heartbeats instead of holding
-- gRPC streams. Their secret is never stored: it is derived from the root
-- key named here. A deregistered node's rows go with it.
ALTER TABLE nodes ADD COLUMN transport TEXT NOT NULL DEFAULT 'grpc';

CREATE TABLE http_agents (
    node_id     TEXT PRIMARY KEY REFERENCES nodes (id) ON DELETE CASCADE,
    root_key_id BIGINT NOT NULL,
    -- The latest report as JSON ('' before the first heartbeat).
    report      TEXT NOT NULL,
    reported_at BIGINT NOT NULL
);

-- Nonces of accepted heartbeats, kept past the timestamp window so that a
-- replay within it is refused.
CREATE TABLE agent_nonces (
    node_id TEXT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    nonce   TEXT NOT NULL,
    seen_at BIGINT NOT NULL,
    PRIMARY KEY (node_id, nonce)
);
