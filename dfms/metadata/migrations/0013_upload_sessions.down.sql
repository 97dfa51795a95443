DROP TABLE upload_session_chunks;
DROP FUNCTION upload_session_chunk_not_swept();
DROP TABLE upload_sessions;
