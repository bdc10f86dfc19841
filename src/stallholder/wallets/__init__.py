"""Prepaid wallets: a buyer's balance per currency, held by the platform (ADR 0011)."""
