"""FastAPI capture service: ``create_app(settings)`` in ``app.py``, one router per resource in ``routers/``."""
