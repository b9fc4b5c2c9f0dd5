"""Trainer configs read from JSON files (the CLI of every trainer: ``--config cfg.json``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


class JsonConfig:
    """Mixin for a trainer's config dataclass: construct it from a dict or a JSON file of its field names."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        # Unknown keys are an error, not ignored: a typo in a config file should not silently train with a default.
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown {cls.__name__} keys {unknown}; valid keys: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json_file(cls, path: str | Path):
        return cls.from_dict(json.loads(Path(path).read_text()))
