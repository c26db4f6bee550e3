-- An organisation's runtime settings (SettingsService): one versioned JSON
-- document per organisation, read by the loops at every activation.
CREATE TABLE org_settings (
    org_id     TEXT PRIMARY KEY REFERENCES organizations (id),
    version    BIGINT NOT NULL,
    settings   TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);
