"""Digital delivery: uploaded files and license-key pools attached to products, and what a
paid order delivers (signed, expiring download links with a count; issued keys)."""
