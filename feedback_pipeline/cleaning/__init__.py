"""Cleaning stage: PII redaction (``pii``) and validation, de-duplication and labelling of feedback (``clean``)."""
