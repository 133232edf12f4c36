"""Helpers shared by several test tiers (real servers the tests start and stop themselves)."""
