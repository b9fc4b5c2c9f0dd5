"""cleaned_feedback: validated, deduplicated, PII-redacted feedback."""


import dagster as dg
import pandas as pd

from feedback_pipeline.cleaning.clean import clean_feedback
from feedback_pipeline.defs.resources import WorkspaceResource


@dg.asset(group_name="cleaning", kinds={"pandas"},
          description="Feedback that passed validation, with duplicates resolved and identifiers redacted.")
def cleaned_feedback(context: dg.AssetExecutionContext, raw_feedback: pd.DataFrame,
                     workspace: WorkspaceResource) -> pd.DataFrame:
    result = clean_feedback(raw_feedback)
    rejected_path = workspace.path("reports") / "rejected_feedback.csv"
    result.rejected.to_csv(rejected_path, index=False)
    reasons = result.rejected["reject_reason"].value_counts().rename_axis("reason").rename("rows").reset_index()
    stats = {k: v for k, v in result.stats.items() if isinstance(v, (int, float))}
    context.add_output_metadata({
        **stats,
        "labels": dg.MetadataValue.json(result.cleaned["label"].value_counts().to_dict()),
        "pii_redactions": dg.MetadataValue.json(result.stats.get("pii_redactions", {})),
        "rejected_reasons": dg.MetadataValue.md(reasons.to_markdown(index=False) if len(reasons) else "none"),
        "rejected_rows_file": dg.MetadataValue.path(str(rejected_path)),
    })
    return result.cleaned


@dg.asset_check(asset=cleaned_feedback, description="Cleaning left rated rows to learn from.")
def check_cleaned_feedback_has_rated_rows(cleaned_feedback: pd.DataFrame) -> dg.AssetCheckResult:
    rated = int(cleaned_feedback["label"].isin(["liked", "disliked"]).sum())
    return dg.AssetCheckResult(passed=rated > 0, metadata={"rated_rows": rated})
