"""Serving chat models: the router (which variant answers), the model pool (loading, hot swap)."""
