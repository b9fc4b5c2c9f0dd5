"""sft_dataset and kto_dataset: fingerprinted JSONL training sets, split by conversation."""


import dagster as dg
import pandas as pd
from pydantic import Field

from feedback_pipeline.datasets.build import BuiltDataset, SFTPolicy, build_kto_dataset, build_sft_dataset, read_jsonl
from feedback_pipeline.datasets.splits import leaked_prompts
from feedback_pipeline.defs.checks import no_identifiers
from feedback_pipeline.defs.resources import WorkspaceResource


class SFTDatasetConfig(dg.Config):
    liked_weight: float = Field(2.0, description="Loss weight of a liked response.")
    disliked_weight: float = Field(0.5, description="Loss weight of a disliked response, when included.")
    include_disliked: bool = Field(False, description="Also imitate disliked responses (down-weighted).")
    eval_fraction: float = Field(0.15, description="Share of conversations held out for evaluation.")
    min_train_examples: int = Field(20, description="Stop with an error below this many training examples.")


def describe_dataset(context: dg.AssetExecutionContext, built: BuiltDataset) -> dict:
    context.add_output_metadata({
        "fingerprint": built.fingerprint,
        "train_rows": built.counts.get("train", 0),
        "eval_rows": built.counts.get("eval", 0),
        "label_balance": dg.MetadataValue.json(built.label_balance),
        "data_watermark": built.data_watermark or "none",
        "directory": dg.MetadataValue.path(str(built.directory)),
    })
    return {"name": built.name, "directory": str(built.directory), "fingerprint": built.fingerprint,
            "counts": built.counts, "data_watermark": built.data_watermark,
            "train_file": str(built.file("train")), "eval_file": str(built.file("eval"))}


@dg.asset(group_name="datasets", kinds={"json"},
          description="OpenAI chat JSONL of liked responses with per-example weights (train/eval).")
def sft_dataset(context: dg.AssetExecutionContext, config: SFTDatasetConfig, cleaned_feedback: pd.DataFrame,
                workspace: WorkspaceResource) -> dict:
    policy = SFTPolicy(**config.model_dump())
    return describe_dataset(context, build_sft_dataset(cleaned_feedback, workspace.path("datasets"), policy))


@dg.asset(group_name="datasets", kinds={"json"},
          description="prompt / completion / label records of every rated response (train/eval).")
def kto_dataset(context: dg.AssetExecutionContext, cleaned_feedback: pd.DataFrame,
                workspace: WorkspaceResource) -> dict:
    return describe_dataset(context, build_kto_dataset(cleaned_feedback, workspace.path("datasets")))


def _prompts(records: list[dict]) -> list[str]:
    return [next(m["content"] for m in reversed(r.get("prompt") or r["messages"][:-1]) if m["role"] == "user")
            for r in records]


def _texts(records: list[dict]) -> list[str]:
    return [m["content"] for r in records for m in (r.get("messages") or [
        *r["prompt"], *r.get("completion", []), *r.get("chosen", []), *r.get("rejected", [])])]


def leakage_check(built: dict) -> dg.AssetCheckResult:
    leaked = leaked_prompts(_prompts(read_jsonl(built["train_file"])), _prompts(read_jsonl(built["eval_file"])))
    return dg.AssetCheckResult(passed=not leaked, metadata={"leaked_prompts": len(leaked)})


def identifiers_check(built: dict) -> dg.AssetCheckResult:
    return no_identifiers(_texts(read_jsonl(built["train_file"]) + read_jsonl(built["eval_file"])))


@dg.asset_check(asset=sft_dataset, description="No prompt appears in both the train and the eval split.")
def check_sft_no_split_leakage(sft_dataset: dict) -> dg.AssetCheckResult:
    return leakage_check(sft_dataset)


@dg.asset_check(asset=kto_dataset, description="No prompt appears in both the train and the eval split.")
def check_kto_no_split_leakage(kto_dataset: dict) -> dg.AssetCheckResult:
    return leakage_check(kto_dataset)


@dg.asset_check(asset=sft_dataset, description="No detectable identifier (email, phone, card ...) in any text.")
def check_sft_no_identifiers(sft_dataset: dict) -> dg.AssetCheckResult:
    return identifiers_check(sft_dataset)


@dg.asset_check(asset=kto_dataset, description="No detectable identifier (email, phone, card ...) in any text.")
def check_kto_no_identifiers(kto_dataset: dict) -> dg.AssetCheckResult:
    return identifiers_check(kto_dataset)
