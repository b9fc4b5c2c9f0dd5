"""Check results shared by several assets' checks."""

from collections.abc import Iterable

import dagster as dg

from feedback_pipeline.cleaning.pii import find_identifiers


def no_identifiers(texts: Iterable[str]) -> dg.AssetCheckResult:
    """Fails when any text still holds a detectable identifier (email, phone, card, IBAN ...)."""
    hits = [hit for text in texts for hit in find_identifiers(text)]
    return dg.AssetCheckResult(passed=not hits, metadata={
        "identifiers_found": len(hits), "kinds": dg.MetadataValue.json(sorted({h.kind for h in hits}))})
