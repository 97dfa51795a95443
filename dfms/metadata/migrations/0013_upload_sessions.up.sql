-- Chunk-level uploads (POST /api/v1/chunks/sessions, PUT /api/v1/chunks/{sha256},
-- POST /api/v1/files/commit): an upload session records the chunks a user sent, which
-- is what proves they hold those bytes (proof of ownership), and keeps those chunks
-- referenced for the garbage collector until the session expires, as the parts of an
-- open multipart upload are. The GC's lifecycle pass deletes expired sessions.
CREATE TABLE upload_sessions (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX upload_sessions_owner_idx ON upload_sessions (owner_id, expires_at);
CREATE INDEX upload_sessions_expiry_idx ON upload_sessions (expires_at);

-- A chunk sent in a session and not yet committed into one of the owner's files (a
-- commit moves its chunks out of the owner's sessions: the file references them now).
CREATE TABLE upload_session_chunks (
    session_id    uuid NOT NULL REFERENCES upload_sessions (id) ON DELETE CASCADE,
    chunk_sha256  bytea NOT NULL REFERENCES chunks (sha256),
    sent_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, chunk_sha256)
);
-- The collector's reference checks look chunks up here.
CREATE INDEX upload_session_chunks_chunk_idx ON upload_session_chunks (chunk_sha256);

-- Like manifest entries (migration 0010): a session may not take a reference on a chunk
-- the collector is sweeping. FOR KEY SHARE conflicts with the claim's FOR UPDATE, so a
-- claim and a new reference are serialized; one to a swept chunk fails like a
-- foreign-key violation (the chunk PUT is answered 503 and sent again).
CREATE FUNCTION upload_session_chunk_not_swept() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM chunks WHERE sha256 = NEW.chunk_sha256 AND state <> 'sweeping'
        FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'chunk % is gone or being deleted by the garbage collector',
            encode(NEW.chunk_sha256, 'hex')
            USING ERRCODE = 'foreign_key_violation', TABLE = 'upload_session_chunks',
                  CONSTRAINT = 'upload_session_chunks_chunk_not_swept';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER upload_session_chunks_chunk_not_swept
    BEFORE INSERT OR UPDATE OF chunk_sha256 ON upload_session_chunks
    FOR EACH ROW EXECUTE FUNCTION upload_session_chunk_not_swept();
