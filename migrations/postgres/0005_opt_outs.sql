-- Numbers that asked for no more SMS (PRODUCT.md §5: `STOP`, or a provider's
-- opted-out answer such as Twilio 21610) until they send `START`. SMS to them
-- are `cancelled(opted_out)` instead of sent.
CREATE TABLE opt_outs (
    address      TEXT    PRIMARY KEY,
    opted_out_at BIGINT  NOT NULL,
    source       TEXT    NOT NULL,
    detail       TEXT
);
