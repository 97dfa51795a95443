-- Share links: presigned download URLs for one file (dfms/gateway/routes_shares.py).
-- id is the random id inside the token; only SHA-256 of the token is stored.
CREATE TABLE share_links (
    id              uuid PRIMARY KEY,
    token_hash      bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    file_id         uuid NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    owner_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    max_downloads   integer CHECK (max_downloads >= 1),
    download_count  integer NOT NULL DEFAULT 0
                    CHECK (download_count >= 0
                           AND (max_downloads IS NULL OR download_count <= max_downloads)),
    password_hash   text,
    revoked_at      timestamptz
);
CREATE INDEX share_links_owner_idx ON share_links (owner_id, created_at DESC);
-- Purging a file cascades here; without this index every purge scans the table.
CREATE INDEX share_links_file_idx ON share_links (file_id);
