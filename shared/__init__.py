"""Tierstream's shared code: contracts, topics, settings, plumbing and the pure domain."""
