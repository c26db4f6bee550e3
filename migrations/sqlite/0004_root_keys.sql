-- Root keys: macaroons name the key that signed them; the newest signs new
-- ones, every key still verifies the macaroons it signed (RotateRootKey).
-- The first key is the one the settings held: key 0, which every macaroon
-- minted before key ids existed was signed with.
CREATE TABLE root_keys (
    key_id     INTEGER PRIMARY KEY,
    secret     BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
INSERT INTO root_keys (key_id, secret, created_at)
    SELECT 0, value, 0 FROM settings WHERE key = 'macaroon_root_key';
