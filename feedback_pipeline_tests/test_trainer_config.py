"""The Dagster run configs of the trainers are made from the trainers' dataclasses: no second copy to drift."""

import dataclasses

import dagster as dg
import pytest
from pydantic import ValidationError

from feedback_pipeline.defs.preference import PreferenceTrainingConfig
from feedback_pipeline.defs.reward import RewardTrainingConfig
from feedback_pipeline.defs.trainer_config import TRAINER_PATHS, trainer_config
from feedback_pipeline.defs.training import ChatTrainingConfig
from feedback_pipeline.training.chat_preference import PreferenceConfig
from feedback_pipeline.training.chat_sft import ChatSFTConfig
from feedback_pipeline.training.reward import RewardConfig

PATHS = {"base_model_path": "b", "train_file": "t", "output_dir": "o"}


@pytest.mark.parametrize("config_cls, trainer_cls", [(ChatTrainingConfig, ChatSFTConfig),
                                                     (PreferenceTrainingConfig, PreferenceConfig),
                                                     (RewardTrainingConfig, RewardConfig)])
def test_every_tunable_trainer_field_is_run_config_with_the_trainers_default_and_help(config_cls, trainer_cls):
    tunable = {f for f in dataclasses.fields(trainer_cls) if f.name not in TRAINER_PATHS}
    assert {config_cls.trainer_fields[k] for k in config_cls.trainer_fields} == {f.name for f in tunable}
    config = config_cls()
    trainer = trainer_cls(**PATHS)
    by_field = {v: k for k, v in config_cls.trainer_fields.items()}
    for f in tunable:
        key = by_field[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert getattr(config, key) == default, f.name  # the field's default (None where __post_init__ resolves it)
        assert config_cls.model_fields[key].description == f.metadata["help"], f.name
    # the defaults build the trainer's config as it is by default
    assert config.to_trainer(**PATHS) == trainer


def test_renamed_keys_literals_and_validation():
    cfg = PreferenceTrainingConfig(method="dpo", batch_size=2, max_steps=3).to_trainer(**PATHS, resume=True)
    assert (cfg.method, cfg.per_device_train_batch_size, cfg.max_steps, cfg.resume) == ("dpo", 2, 3, True)
    with pytest.raises(ValidationError):
        PreferenceTrainingConfig(method="ppo")
    with pytest.raises(ValueError, match="KTO needs"):  # the dataclass validates the combination
        PreferenceTrainingConfig(batch_size=1).to_trainer(**PATHS)
    assert ChatTrainingConfig(eval_during_training=True).to_trainer(**PATHS) == ChatSFTConfig(**PATHS)


def test_a_required_field_must_be_supplied_by_the_asset():
    with pytest.raises(ValueError, match="has no default"):
        trainer_config(ChatSFTConfig, exclude=("train_file", "output_dir"))
    with pytest.raises(ValueError, match="no fields"):
        trainer_config(ChatSFTConfig, rename={"steps": "max_step"})


def test_run_config_reaches_the_asset_as_the_launchpad_sends_it():
    seen = []

    @dg.asset
    def probe(config: PreferenceTrainingConfig) -> None:
        seen.append(config.to_trainer(**PATHS))

    assert dg.materialize([probe], run_config={"ops": {"probe": {"config": {
        "method": "dpo", "batch_size": 2, "early_stopping_patience": None, "lora_target_modules": ["q_proj"]}}}}).success
    assert seen[0].lora_target_modules == ["q_proj"] and seen[0].per_device_train_batch_size == 2
    with pytest.raises(dg.DagsterInvalidConfigError, match="method"):
        dg.materialize([probe], run_config={"ops": {"probe": {"config": {"method": "ppo"}}}})
