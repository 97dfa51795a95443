DROP TRIGGER manifest_entries_chunk_not_swept ON manifest_entries;
DROP FUNCTION manifest_entry_chunk_not_swept();
DROP INDEX multipart_parts_manifest_idx;
DROP INDEX chunks_gc_sweep_idx;
-- Rows in 'sweeping' would violate the old CHECK. Their objects may be partly deleted,
-- so they must not become live: they go back to 'condemned' (condemned_at kept). Code
-- of this schema version never deduplicates onto a condemned chunk (a write stores the
-- bytes again), and nothing references them (the trigger above saw to that), so they
-- are safe there and the objects they may still have stay accounted for.
UPDATE chunks SET state = 'condemned', condemned_at = coalesce(condemned_at, now())
    WHERE state = 'sweeping';
ALTER TABLE chunks DROP CONSTRAINT chunks_state_check;
ALTER TABLE chunks ADD CONSTRAINT chunks_state_check CHECK (state IN ('live', 'condemned'));
