"""raw_feedback: a snapshot of the feedback store, the root of the lineage."""


import dagster as dg
import pandas as pd

from feedback_pipeline.defs.resources import FeedbackStoreResource


@dg.asset(group_name="ingestion", kinds={"sql", "pandas"},
          description="Every feedback record in the store (PostgreSQL or SQLite), as received.")
def raw_feedback(context: dg.AssetExecutionContext, feedback_store: FeedbackStoreResource) -> pd.DataFrame:
    frame = feedback_store.store().read_frame()
    rated = frame["rating_thumb"].notna()
    by_source = frame.groupby("source").size().rename("rows").reset_index()
    context.add_output_metadata({
        "rows": len(frame),
        "rated_rows": int(rated.sum()),
        "liked": int((frame["rating_thumb"] == 1).sum()),
        "disliked": int((frame["rating_thumb"] == -1).sum()),
        "newest_ingested_at": str(frame["ingested_at"].max()) if len(frame) else "none",
        "by_source": dg.MetadataValue.md(by_source.to_markdown(index=False)),
    })
    return frame
