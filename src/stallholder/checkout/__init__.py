"""Checkout sessions and checkout links."""
