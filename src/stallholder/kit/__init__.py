"""Domain-agnostic building blocks: database, money, time, ids, errors, pagination."""
