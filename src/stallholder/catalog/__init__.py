"""Products, variants, prices and collections."""
