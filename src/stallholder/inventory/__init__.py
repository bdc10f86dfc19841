"""Inventory: locations, stock per SKU and location, the movement ledger, and holds on
stock for checkout sessions (``docs/inventory.md``)."""
