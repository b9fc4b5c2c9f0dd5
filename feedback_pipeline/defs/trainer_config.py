"""Dagster run config made from a trainer's config dataclass: one source of fields, defaults and help text.

``trainer_config(ChatSFTConfig, exclude=PATHS)`` returns a ``dg.Config`` class whose fields are the dataclass's
fields (minus the ones the asset fills in: paths, resume), with the dataclass's types (``Literal`` becomes a choice
in the launchpad), defaults and ``help`` metadata as descriptions. ``rename`` keeps a shorter run-config key for a
dataclass field (``batch_size`` for ``per_device_train_batch_size``). Subclass the result to add Dagster-only
fields; ``to_trainer(**paths)`` builds the dataclass (its ``__post_init__`` validates the combination)::

    class ChatTrainingConfig(trainer_config(ChatSFTConfig, exclude=TRAINER_PATHS, rename=BATCH_SIZE)):
        eval_during_training: bool = Field(False, description="...")

    cfg = config.to_trainer(base_model_path=..., train_file=..., output_dir=..., resume=True)
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

import dagster as dg
import pydantic
from pydantic import Field

# What the assets supply themselves: the files and folders of a run, and resuming (always on in the pipeline).
TRAINER_PATHS = ("base_model_path", "train_file", "eval_file", "output_dir", "resume")
BATCH_SIZE = {"batch_size": "per_device_train_batch_size"}


class TrainerConfig(dg.Config):
    """Base of the classes ``trainer_config`` makes."""

    trainer_class: ClassVar[type]
    trainer_fields: ClassVar[Mapping[str, str]]  # run-config key -> dataclass field

    def trainer_values(self) -> dict[str, Any]:
        """The dataclass fields this run config sets, under the dataclass's names."""
        return {field: getattr(self, key) for key, field in self.trainer_fields.items()}

    def to_trainer(self, **fields: Any) -> Any:
        """The trainer's config dataclass: this run config's values plus ``fields`` (paths) from the asset."""
        return self.trainer_class(**{**self.trainer_values(), **fields})


def trainer_config(trainer_class: type, *, exclude: tuple[str, ...] = TRAINER_PATHS,
                   rename: Mapping[str, str] | None = None, name: str | None = None) -> type[TrainerConfig]:
    """A ``TrainerConfig`` subclass with one field per field of the dataclass ``trainer_class`` not in ``exclude``.

    ``rename``: run-config key -> dataclass field. A required dataclass field must be excluded (the asset supplies
    it): run config never has to repeat what the asset knows."""
    if not dataclasses.is_dataclass(trainer_class):
        raise TypeError(f"{trainer_class!r} is not a dataclass")
    key_of = {field: key for key, field in (rename or {}).items()}
    hints = typing.get_type_hints(trainer_class)
    known = {f.name for f in dataclasses.fields(trainer_class)}
    unknown = sorted(set(key_of) - known)  # `exclude` may name fields a trainer does not have (TRAINER_PATHS)
    if unknown:
        raise ValueError(f"{trainer_class.__name__} has no fields {unknown} to rename")
    fields: dict[str, Any] = {}
    own = trainer_class.__dict__.get("__annotations__", {})
    # The trainer's own fields first, then those of its mixins (LoRA, checkpoints), as the launchpad lists them.
    for f in sorted(dataclasses.fields(trainer_class), key=lambda f: f.name not in own):
        if f.name in exclude or not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = {"default": f.default}
        elif f.default_factory is not dataclasses.MISSING:
            default = {"default_factory": f.default_factory}
        else:
            raise ValueError(f"{trainer_class.__name__}.{f.name} has no default: exclude it (the asset supplies it)")
        fields[key_of.get(f.name, f.name)] = (hints[f.name], Field(**default, description=f.metadata.get("help")))
    model = pydantic.create_model(name or f"{trainer_class.__name__}RunConfig", __base__=TrainerConfig, **fields)
    model.trainer_class = trainer_class
    model.trainer_fields = {key: next((f for f, k in key_of.items() if k == key), key) for key in fields}
    return model
