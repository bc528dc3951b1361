"""Kestrel heads: feature pyramids -> predictions and losses."""
