-- Rows the broker did not take (a nack, or an unroutable event held for retry) wait until
-- `next_attempt_at` instead of blocking the rows behind them.
ALTER TABLE outbox ADD COLUMN attempts integer NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN next_attempt_at timestamptz;
