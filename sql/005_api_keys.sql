-- API keys of the capture service, version 5. Only the sha256 of a secret is stored, never the secret itself:
-- `feedback-pipeline keys create` prints the secret once. A revoked key stays (revoked_at set) so the records it
-- wrote keep a resolvable writer.

CREATE TABLE api_keys (
    id          {uuid} PRIMARY KEY,
    name        TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,   -- hex sha256 of the secret
    scopes      TEXT NOT NULL,          -- comma-separated subset of: write, read, admin
    created_at  {timestamp} NOT NULL,
    revoked_at  {timestamp}             -- NULL = active
);
