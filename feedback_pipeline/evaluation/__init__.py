"""Offline evaluation of fine-tuned models: plain Python, no Dagster, so it runs from a shell or a test."""
