-- Storage nodes and the consistent-hash ring.
CREATE TABLE nodes (
    id                    text PRIMARY KEY,
    endpoint              text NOT NULL,
    bucket                text NOT NULL DEFAULT 'dfms-chunks',
    zone                  text NOT NULL DEFAULT 'default',
    weight                double precision NOT NULL DEFAULT 1.0 CHECK (weight > 0),
    -- admin_state is what an operator asked for; health is what probes see.
    admin_state           text NOT NULL DEFAULT 'active'
                          CHECK (admin_state IN ('active', 'draining', 'removed')),
    health                text NOT NULL DEFAULT 'healthy'
                          CHECK (health IN ('healthy', 'suspect', 'down')),
    health_changed_at     timestamptz NOT NULL DEFAULT now(),
    last_probe_at         timestamptz,
    last_probe_latency_ms double precision,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- Every ring change is a new row; the highest epoch is the ring in force.
CREATE TABLE ring_state (
    epoch              bigint PRIMARY KEY CHECK (epoch > 0),
    vnodes_per_weight  integer NOT NULL CHECK (vnodes_per_weight > 0),
    members            jsonb NOT NULL,
    checksum           text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now()
);
