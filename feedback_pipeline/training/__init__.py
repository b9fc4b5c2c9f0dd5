"""Model preparation and fine-tuning code: plain Python, no Dagster, so it runs from a shell or a test."""
