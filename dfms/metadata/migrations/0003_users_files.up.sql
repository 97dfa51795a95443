-- Accounts, folders, files and their versions.
CREATE TABLE users (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email          text NOT NULL UNIQUE,
    display_name   text NOT NULL,
    password_hash  text NOT NULL,
    role           text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    is_active      boolean NOT NULL DEFAULT true,
    quota_bytes    bigint CHECK (quota_bytes IS NULL OR quota_bytes >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Rotating refresh tokens: one row per issued token, grouped in families.
CREATE TABLE refresh_tokens (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    family_id   uuid NOT NULL,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash  bytea NOT NULL UNIQUE,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    retired_at  timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);

CREATE TABLE folders (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    parent_id   uuid REFERENCES folders (id),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
-- NULL parent is the root; COALESCE makes names unique there too.
CREATE UNIQUE INDEX folders_live_name_uniq
    ON folders (owner_id, COALESCE(parent_id, '00000000-0000-0000-0000-000000000000'), name)
    WHERE deleted_at IS NULL;

CREATE TABLE files (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    folder_id        uuid REFERENCES folders (id),
    name             text NOT NULL,
    current_version  integer,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz
);
CREATE UNIQUE INDEX files_live_name_uniq
    ON files (owner_id, COALESCE(folder_id, '00000000-0000-0000-0000-000000000000'), name)
    WHERE deleted_at IS NULL;

CREATE TABLE file_versions (
    file_id      uuid NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    version      integer NOT NULL CHECK (version > 0),
    manifest_id  uuid NOT NULL REFERENCES manifests (id),
    mime_type    text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (file_id, version)
);
CREATE INDEX file_versions_manifest_idx ON file_versions (manifest_id);
