"""raw_feedback: the feedback table itself, the root of the lineage (a reference, never a copy of the rows)."""

import warnings

import dagster as dg
import pandas as pd

from feedback_pipeline.defs.resources import FeedbackStoreResource
from feedback_pipeline.defs.table_refs import table_ref_io_manager
from feedback_pipeline.store.cleaned import feedback_ref
from feedback_pipeline.store.refs import TableRef


@dg.asset(group_name="ingestion", kinds={"sql"}, io_manager_def=table_ref_io_manager,
          description="The feedback table in the store (PostgreSQL or SQLite), as received: counts by source and "
                      "a fingerprint, from one SQL aggregate; the rows stay in the database.")
def raw_feedback(context: dg.AssetExecutionContext, feedback_store: FeedbackStoreResource) -> TableRef:
    store = feedback_store.store()
    by_source = store.summary()
    ref = feedback_ref(store, by_source)
    newest = max((r["newest_ingested_at"] for r in by_source if r["newest_ingested_at"]), default=None)
    table = pd.DataFrame([{"source": r["source"], "rows": r["rows"]} for r in by_source], columns=["source", "rows"])
    context.add_output_metadata({
        "rows": ref.rows,
        "rated_rows": sum(int(r["rated_rows"]) for r in by_source),
        "liked": sum(int(r["liked"] or 0) for r in by_source),
        "disliked": sum(int(r["disliked"] or 0) for r in by_source),
        **({"newest_ingested_at": newest.isoformat()} if newest else {}),
        "fingerprint": ref.fingerprint,
        "by_source": dg.MetadataValue.md(table.to_markdown(index=False)),
    })
    return ref
