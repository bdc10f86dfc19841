"""Events: the transactional outbox, outgoing webhooks and the inbound inbox."""
