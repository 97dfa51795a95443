-- Chunk garbage collection (gc/): a third chunk state and what the collector needs.
--
--   live       referenced, or recently written/deduplicated (last_ref_at)
--   condemned  marked by GC as unreferenced; its bytes are still there, so a write of
--              the same content flips it back to live (a dedup hit)
--   sweeping   claimed by GC: its objects are being deleted on every node. Nothing may
--              use or reference it any more; a writer of the same content waits until
--              the row is gone and then stores the bytes again.
ALTER TABLE chunks DROP CONSTRAINT chunks_state_check;
ALTER TABLE chunks ADD CONSTRAINT chunks_state_check
    CHECK (state IN ('live', 'condemned', 'sweeping'));

-- The sweep walks condemned (and leftover sweeping) chunks in sha256 order (keyset
-- pagination). The mark walks live chunks by primary key: an index on last_ref_at
-- would make every dedup hit (which sets last_ref_at) a non-HOT update.
CREATE INDEX chunks_gc_sweep_idx ON chunks (state, sha256) WHERE state <> 'live';

-- Orphan manifests: referenced by no file version and no multipart part. file_versions
-- already has file_versions_manifest_idx; multipart parts had no index on it.
CREATE INDEX multipart_parts_manifest_idx ON multipart_parts (manifest_id);

-- No manifest entry may point at a chunk that is being swept. The collector claims a
-- chunk under FOR UPDATE after checking that nothing references it; this trigger takes
-- FOR KEY SHARE on the chunk (the lock the foreign-key check takes too), which conflicts
-- with it. So a claim and a new reference are serialized: either the reference commits
-- first (and the claim sees it, or skips the locked row) or the claim does (and the
-- reference fails here, like a foreign-key violation: the upload fails and can be
-- retried, instead of committing a file whose bytes are being deleted). With the grace
-- period this only happens to an upload slower than the grace period.
CREATE FUNCTION manifest_entry_chunk_not_swept() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM chunks WHERE sha256 = NEW.chunk_sha256 AND state <> 'sweeping'
        FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'chunk % is gone or being deleted by the garbage collector',
            encode(NEW.chunk_sha256, 'hex')
            USING ERRCODE = 'foreign_key_violation', TABLE = 'manifest_entries',
                  CONSTRAINT = 'manifest_entries_chunk_not_swept';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER manifest_entries_chunk_not_swept
    BEFORE INSERT OR UPDATE OF chunk_sha256 ON manifest_entries
    FOR EACH ROW EXECUTE FUNCTION manifest_entry_chunk_not_swept();
