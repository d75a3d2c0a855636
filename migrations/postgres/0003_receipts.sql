-- Delivery receipts (PRODUCT.md §6, §7): every authenticated status callback
-- a provider posted, whether it moved its message or not. `status` is the
-- provider's own word; `effect` is what rollcall did with it.
CREATE TABLE receipts (
    id           BIGSERIAL PRIMARY KEY,
    received_at  BIGINT  NOT NULL,
    provider     TEXT    NOT NULL,
    provider_ref TEXT    NOT NULL,
    message_id   BIGINT  REFERENCES messages(id),
    status       TEXT    NOT NULL,
    error_code   TEXT,
    effect       TEXT    NOT NULL CHECK (effect IN ('applied', 'unchanged', 'unmatched'))
);
CREATE INDEX receipts_message ON receipts (message_id);

-- A receipt finds its message by the provider's id for it.
CREATE INDEX messages_provider_ref ON messages (provider, provider_ref);

-- Failed authentications are counted per source address (PRODUCT.md §9).
CREATE INDEX inbound_source ON inbound (source, received_at);
