"""Thin HTTP routes; the work happens in the objects on ``app.state.gateway``."""
