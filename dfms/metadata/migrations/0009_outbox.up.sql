-- Transactional outbox (dfms/events/outbox.py): an event is a row written in
-- the same transaction as the change it describes, so it exists iff the change
-- commits. The relay (dfms/events/relay.py) publishes unsent rows to Kafka in
-- id order and stamps published_at once the broker has acknowledged them.
CREATE TABLE outbox (
    id             bigserial PRIMARY KEY,
    event_id       uuid NOT NULL UNIQUE,
    topic          text NOT NULL,
    key            text NOT NULL,
    type           text NOT NULL,
    payload        jsonb NOT NULL,
    schema_version integer NOT NULL DEFAULT 1,
    occurred_at    timestamptz NOT NULL DEFAULT now(),
    trace_context  jsonb,
    published_at   timestamptz,
    attempts       integer NOT NULL DEFAULT 0,
    last_error     text
);
-- The relay's work list: only unsent rows, in id order.
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
-- Per-key order across relays: "is an earlier row of this key still unsent?"
CREATE INDEX outbox_unpublished_key_idx ON outbox (topic, key, id) WHERE published_at IS NULL;
-- The cleanup of published rows past their retention.
CREATE INDEX outbox_published_at_idx ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Wake the relays at once: NOTIFY is delivered when the inserting transaction
-- commits (and never if it rolls back); one notification per transaction.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dfms_outbox', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER outbox_notify_after_insert
    AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Event ids each consumer (dfms/events/consumer.py) has handled: recorded in
-- the handler's transaction, so a redelivered event is skipped.
CREATE TABLE processed_events (
    consumer      text NOT NULL,
    event_id      uuid NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX processed_events_processed_at_idx ON processed_events (processed_at);
