-- File lifecycle: trash bookkeeping, per-user retention overrides, multipart uploads.

-- deleted_at marks an item as in the trash (until GC purges it). trashed_with is
-- the folder whose deletion took the item along (NULL: it was deleted itself, so
-- it is listed in the trash); original_path is where it lived, for restore.
ALTER TABLE files ADD COLUMN trashed_with uuid;
ALTER TABLE files ADD COLUMN original_path text;
ALTER TABLE folders ADD COLUMN trashed_with uuid;
ALTER TABLE folders ADD COLUMN original_path text;
CREATE INDEX files_trash_idx ON files (owner_id, deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX folders_trash_idx ON folders (owner_id, deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX files_folder_idx ON files (folder_id);
CREATE INDEX folders_parent_idx ON folders (parent_id);

-- An administrator may override the version retention per user (NULL: the default).
ALTER TABLE users ADD COLUMN keep_versions integer CHECK (keep_versions >= 0);
ALTER TABLE users ADD COLUMN keep_versions_days integer CHECK (keep_versions_days >= 0);

CREATE TABLE multipart_uploads (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    folder_id   uuid REFERENCES folders (id),
    file_name   text NOT NULL,
    file_size   bigint CHECK (file_size >= 0),
    state       text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'completed', 'aborted')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX multipart_uploads_owner_idx ON multipart_uploads (owner_id, state);
CREATE INDEX multipart_uploads_expiry_idx ON multipart_uploads (expires_at) WHERE state = 'open';

-- Each part is stored as a manifest of its own; completing the upload copies the
-- parts' entries, in order, into the file's manifest (rows, never bytes).
CREATE TABLE multipart_parts (
    upload_id    uuid NOT NULL REFERENCES multipart_uploads (id) ON DELETE CASCADE,
    part_number  integer NOT NULL CHECK (part_number >= 1),
    manifest_id  uuid NOT NULL REFERENCES manifests (id),
    size         bigint NOT NULL CHECK (size >= 0),
    sha256       bytea NOT NULL,
    uploaded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (upload_id, part_number)
);
