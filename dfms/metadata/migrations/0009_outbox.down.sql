DROP INDEX processed_events_processed_at_idx;
DROP TABLE processed_events;
DROP TRIGGER outbox_notify_after_insert ON outbox;
DROP FUNCTION outbox_notify();
DROP INDEX outbox_published_at_idx;
DROP INDEX outbox_unpublished_key_idx;
DROP INDEX outbox_unpublished_idx;
DROP TABLE outbox;
