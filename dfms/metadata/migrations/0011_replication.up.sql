-- The replication manager's scrubber (replication/scrubber.py) walks every replica in
-- (chunk_sha256, node_id) order at a configured rate. Where it is and how long its
-- last full pass took live here, so a restart resumes the pass instead of starting over.
CREATE TABLE scrub_state (
    id                  text PRIMARY KEY,
    cursor_sha256       bytea,
    cursor_node_id      text,
    pass_started_at     timestamptz NOT NULL DEFAULT now(),
    pass_replicas       bigint NOT NULL DEFAULT 0,
    pass_bytes          bigint NOT NULL DEFAULT 0,
    last_pass_seconds   double precision,
    last_pass_replicas  bigint,
    last_pass_bytes     bigint,
    last_pass_done_at   timestamptz
);
