"""Trainer configs read from JSON files (the CLI of every trainer: ``--config cfg.json``)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
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

    def normalise_common(self, at_least_one: tuple[str, ...]) -> None:
        """What every trainer config's ``__post_init__`` starts with: a comma-separated ``lora_target_modules`` (as
        JSON files may give it) becomes a list (an empty one raises), an empty ``eval_file`` means none, each
        ``at_least_one`` field >= 1."""
        if hasattr(self, "lora_target_modules"):
            modules = self.lora_target_modules
            if isinstance(modules, str):
                modules = [m.strip() for m in modules.split(",") if m.strip()]
            self.lora_target_modules = list(modules)
            if not self.lora_target_modules:
                raise ValueError(f"{type(self).__name__}.lora_target_modules is empty")
        if getattr(self, "eval_file", None) == "":
            self.eval_file = None
        for name in at_least_one:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be >= 1, got {getattr(self, name)!r}")


def jsonl_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(``path:line``, parsed value) for every non-blank line of a trainer's JSONL input; a line that is not JSON
    raises with its line number, so a bad file never trains on part of itself."""
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc})") from exc
            yield where, record


def run_cli(config_cls: type, main, description: str | None, argv=None) -> None:
    """``python -m <trainer> --config cfg.json``: see ``feedback_pipeline.training.common.run_cli`` (kept here for
    the trainers that import it from this module)."""
    from feedback_pipeline.training.common import run_cli as _run_cli

    _run_cli(config_cls, main, description, argv)
