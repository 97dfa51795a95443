-- Replicas that need work: written below n, found corrupt or missing on read.
-- The replication manager drains this queue; a full reconciliation pass finds
-- anything a lost row would have missed.
CREATE TABLE repair_queue (
    id            bigserial PRIMARY KEY,
    chunk_sha256  bytea NOT NULL REFERENCES chunks (sha256) ON DELETE CASCADE,
    node_id       text REFERENCES nodes (id),
    reason        text NOT NULL CHECK (reason IN ('under_replicated', 'corrupt', 'missing')),
    detected_at   timestamptz NOT NULL DEFAULT now()
);
-- One open entry per chunk, node and reason: repeated detections do not pile up.
CREATE UNIQUE INDEX repair_queue_once
    ON repair_queue (chunk_sha256, COALESCE(node_id, ''), reason);
