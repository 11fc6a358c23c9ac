"""Discord notifications: per-channel webhooks, durable outbox, redaction, dedupe."""
