"""The consumers of cleaned_feedback that used to receive the whole window as a frame (DPO pairs, embedding pairs,
the chat evaluations' segments) now read from the store: the files, manifests and segments they produce are the same
bytes as the frame-based builders' on tricky rows (several raters per answer, ties, empty answers, other languages,
ranks, retrieved documents) and on oasst1, in small chunks and batches, on SQLite and PostgreSQL."""

import itertools
import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from feedback_pipeline.cleaning.clean import clean_feedback
from feedback_pipeline.datasets.build import SCAN_COLUMNS, BuiltDataset
from feedback_pipeline.datasets.embedding_pairs import (SPLIT_COLUMNS, TEXT_COLUMNS, export_pairs, pairs_from_chunks,
                                                        pairs_from_feedback)
from feedback_pipeline.datasets.preference import TEXT_COLUMNS as DPO_TEXT_COLUMNS
from feedback_pipeline.datasets.preference import build_dpo_dataset, build_dpo_dataset_from_chunks
from feedback_pipeline.defs.automation import last_dataset_watermark
from feedback_pipeline.defs.cleaning import cleaned_feedback
from feedback_pipeline.defs.datasets import describe_dataset
from feedback_pipeline.defs.embedding import embedding_pairs
from feedback_pipeline.defs.evaluation import SEGMENT_COLUMNS, segments_of
from feedback_pipeline.defs.ingestion import raw_feedback
from feedback_pipeline.defs.preference import dpo_dataset
from feedback_pipeline.defs.resources import FeedbackStoreResource, WorkspaceResource
from feedback_pipeline.ingestion.importers import import_records, read_oasst1
from feedback_pipeline.ingestion.records import normalise_record
from feedback_pipeline.store.cleaned import cleaned_by_ids, cleaned_chunks, cleaned_ref, replace_window
from feedback_pipeline_tests.conftest import OASST1
from feedback_pipeline_tests.test_dataset_votes import feedbackqa_records, multi_rater  # noqa: F401 (fixtures)


def _with_documents() -> list[dict]:
    """Retrieved documents as dicts, strings and a JSON string; a document behind both a liked and a disliked
    answer; a disliked answer to a query nobody liked; the same query in another case and spacing."""
    docs = [{"id": "d1", "text": "Wash hands."}, {"id": "d2", "content": "Keep distance."}, "Wear a mask."]
    rows = []
    for k in range(6):
        rows += [{"query": f"How to stay safe {k}?", "response": f"Safe {k}.", "rating": "up", "user_id": f"l{k}",
                  "retrieved_context": docs[: 1 + k % 3]},
                 {"query": f"how to  STAY safe {k}?", "response": f"Unsafe {k}.", "rating": "down", "user_id": f"d{k}",
                  "retrieved_context": [{"id": "d9", "text": f"Lick doorknobs {k}."}, docs[0]]},
                 {"query": f"Nobody liked {k}?", "response": "No.", "rating": "down", "user_id": f"n{k}",
                  "retrieved_context": '["Unrelated passage."]'}]
    return rows


@pytest.fixture(scope="module")
def tricky(multi_rater) -> pd.DataFrame:  # noqa: F811
    extra = clean_feedback(pd.DataFrame([normalise_record(r, "docs") for r in _with_documents()]), redact=False)
    return pd.concat([multi_rater, extra.cleaned], ignore_index=True)


@pytest.fixture(scope="module")
def oasst1() -> pd.DataFrame:
    return clean_feedback(pd.DataFrame([normalise_record(r, "oasst1") for r in read_oasst1(OASST1)]),
                          redact=False).cleaned


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _same_dataset(old: BuiltDataset, new: BuiltDataset) -> None:
    assert new.fingerprint == old.fingerprint and new.counts == old.counts
    assert _files(new.directory) == _files(old.directory)  # train, eval and the manifest, byte for byte


def _frame(store) -> pd.DataFrame:
    """What the IO manager used to hand a consumer annotated pd.DataFrame: the whole window, read at once."""
    return cleaned_ref(store).read(store)


@pytest.mark.parametrize("data", ["tricky", "oasst1"])
def test_dpo_from_the_store_equals_the_frame_builder(store, data, request, tmp_path):
    replace_window(store, request.getfixturevalue(data), None, None)
    frame = _frame(store)
    old = build_dpo_dataset(frame, tmp_path / "frame", min_train_examples=1)
    new = build_dpo_dataset_from_chunks(
        lambda: cleaned_chunks(store, None, None, SCAN_COLUMNS, chunk_size=37),
        lambda ids: cleaned_by_ids(store, None, None, ids, DPO_TEXT_COLUMNS, batch=11),
        tmp_path / "store", min_train_examples=1, batch=7)
    _same_dataset(old, new)
    pairs, sources = new.stats["pairs"], new.label_balance["train"]
    if data == "tricky":  # thumbs pairs from several raters, ties dropped
        assert pairs["emitted"] > 20 and sources.get("thumbs", 0) > 0
        assert pairs["decided_over_reversed_votes"] > 0 and pairs["dropped_low_agreement"] > 0
    else:  # sibling ranks
        assert pairs["rank_votes"] > 0 and sources.get("rank", 0) > 0


@pytest.mark.parametrize("data", ["tricky", "oasst1"])
def test_embedding_pairs_from_the_store_equal_the_frame_builder(store, data, request, tmp_path):
    replace_window(store, request.getfixturevalue(data), None, None)
    old = pairs_from_feedback(_frame(store))
    new = pairs_from_chunks(lambda: cleaned_chunks(store, None, None, SPLIT_COLUMNS, chunk_size=29),
                            lambda: cleaned_chunks(store, None, None, TEXT_COLUMNS, chunk_size=29))
    pd.testing.assert_frame_equal(new, old)
    assert len(new) > 20 and (data == "oasst1" or new["negative"].notna().sum() > 0)
    written = [export_pairs(pairs, tmp_path / name, fingerprinted=True) for name, pairs in (("a", old), ("b", new))]
    assert written[0]["manifest"].parent.name == written[1]["manifest"].parent.name
    for kind in ("jsonl", "csv", "manifest", "train"):
        assert written[0][kind].read_bytes() == written[1][kind].read_bytes()


def test_segments_are_read_for_the_held_out_ids_only(store, tricky):
    rows = tricky.copy()
    rows["intent"] = [["billing", "", None, "login"][k % 4] for k in range(len(rows))]
    rows["project"] = [None if k % 3 else "helpdesk" for k in range(len(rows))]
    replace_window(store, rows, None, None)
    frame = _frame(store)
    old = (frame.drop_duplicates("id").set_index("id")[list(SEGMENT_COLUMNS)]
           .astype(object).where(lambda f: f.notna(), None).to_dict(orient="index"))
    ids = list(frame["id"].iloc[::3]) + ["00000000-0000-0000-0000-00000000dead"]
    found = segments_of(store, cleaned_ref(store), ids)
    assert found == {i: old[i] for i in ids if i in old} and len(found) == len(ids) - 1


def test_the_assets_stream_the_table_and_write_what_the_frame_builders_write(store, tmp_path):
    import_records(store, itertools.islice(read_oasst1(OASST1), 400), "oasst1")
    resources = {"feedback_store": FeedbackStoreResource(db_url=store.url),
                 "workspace": WorkspaceResource(data_dir=str(tmp_path / "data"))}
    result = dg.materialize([raw_feedback, cleaned_feedback, dpo_dataset, embedding_pairs], resources=resources,
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    frame = _frame(store)
    dpo = result.output_for_node("dpo_dataset")
    _same_dataset(build_dpo_dataset(frame, tmp_path / "frame"), BuiltDataset(
        "dpo", Path(dpo["directory"]), dpo["fingerprint"], dpo["counts"], {}, {}, dpo["data_watermark"]))
    pairs = export_pairs(pairs_from_feedback(frame), tmp_path / "frame" / "embedding_pairs", fingerprinted=True)
    built = result.output_for_node("embedding_pairs")
    assert built["fingerprint"] == json.loads(pairs["manifest"].read_text())["fingerprint"]
    for kind in ("jsonl", "csv", "manifest", "train", "eval"):
        assert Path(built[kind]).read_bytes() == pairs[kind].read_bytes()


def test_a_dataset_without_a_watermark_records_null_metadata(tmp_path):
    built = BuiltDataset("sft", tmp_path, "f" * 64, {"train": 1, "eval": 1}, {}, {}, None)

    @dg.asset(name="sft_dataset")
    def sft(context: dg.AssetExecutionContext) -> dict:
        return describe_dataset(context, built)

    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([sft], instance=instance).success
    event = instance.get_latest_materialization_event(dg.AssetKey("sft_dataset"))
    assert isinstance(event.asset_materialization.metadata["data_watermark"], dg.NullMetadataValue)
    assert last_dataset_watermark(instance) is None
