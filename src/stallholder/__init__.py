"""Stallholder: commerce infrastructure for creators who sell directly."""

__version__ = "0.1.0"
