"""Transactional email: templates rendered when an email is queued, sent over SMTP (or
written as ``.eml`` files) by the worker, through the outbox."""
