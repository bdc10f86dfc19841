"""Orders, their line items, receipts and refunds."""
