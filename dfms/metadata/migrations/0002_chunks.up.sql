-- Content-addressed chunks, their replicas, and manifests (ordered chunk lists).
CREATE TABLE chunks (
    sha256        bytea PRIMARY KEY CHECK (octet_length(sha256) = 32),
    size          integer NOT NULL CHECK (size >= 0),
    -- condemned: marked by GC as unreferenced; a dedup hit must not use it.
    state         text NOT NULL DEFAULT 'live' CHECK (state IN ('live', 'condemned')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_ref_at   timestamptz NOT NULL DEFAULT now(),
    condemned_at  timestamptz
);
CREATE INDEX chunks_state_idx ON chunks (state) WHERE state <> 'live';

CREATE TABLE chunk_replicas (
    chunk_sha256  bytea NOT NULL REFERENCES chunks (sha256) ON DELETE CASCADE,
    node_id       text NOT NULL REFERENCES nodes (id),
    state         text NOT NULL DEFAULT 'ok' CHECK (state IN ('ok', 'corrupt', 'missing')),
    written_at    timestamptz NOT NULL DEFAULT now(),
    verified_at   timestamptz,
    PRIMARY KEY (chunk_sha256, node_id)
);
CREATE INDEX chunk_replicas_node_idx ON chunk_replicas (node_id);

CREATE TABLE manifests (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    size          bigint NOT NULL CHECK (size >= 0),
    sha256        bytea NOT NULL CHECK (octet_length(sha256) = 32),
    chunk_count   integer NOT NULL CHECK (chunk_count >= 0),
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE manifest_entries (
    manifest_id   uuid NOT NULL REFERENCES manifests (id) ON DELETE CASCADE,
    idx           integer NOT NULL CHECK (idx >= 0),
    "offset"      bigint NOT NULL CHECK ("offset" >= 0),
    size          integer NOT NULL CHECK (size >= 0),
    chunk_sha256  bytea NOT NULL REFERENCES chunks (sha256),
    PRIMARY KEY (manifest_id, idx)
);
CREATE INDEX manifest_entries_chunk_idx ON manifest_entries (chunk_sha256);
