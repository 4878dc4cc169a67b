"""Helpers shared by the test tiers: real processes on loopback ports."""
