"""Channels: marketplaces a creator also sells on (Shopify, Etsy, WooCommerce), kept in
step with the stock ledger (``docs/channels.md``, ADR 0026)."""
