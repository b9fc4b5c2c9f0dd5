"""The SFT export of ``GET /v1/feedback/export``: stored rows -> the same cleaning, signals, split and weights as
the ``sft_dataset`` asset -> OpenAI chat JSONL lines, each with its ``split``.

The frame is cleaned as a whole (re-ratings and duplicates are resolved across rows), so memory grows with the
rows selected by the filters; the lines are produced one at a time for the response to stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pandas as pd

from feedback_pipeline.cleaning.clean import clean_feedback
from feedback_pipeline.cleaning.signals import apply_signals
from feedback_pipeline.datasets.build import SFTPolicy, sft_records_by_split


def sft_export_lines(raw: pd.DataFrame, policy: SFTPolicy = SFTPolicy(), redact: bool = True) -> Iterator[str]:
    if raw.empty:
        return
    cleaned = apply_signals(clean_feedback(raw, redact=redact).cleaned)
    _, by_split = sft_records_by_split(cleaned, policy)
    for split in ("train", "eval"):
        for record in by_split[split]:
            yield json.dumps({**record, "split": split}, ensure_ascii=False, sort_keys=True) + "\n"
