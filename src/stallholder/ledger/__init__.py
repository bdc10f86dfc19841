"""The double-entry journal, balances and their verification."""
