"""The IO manager of the assets that are tables: nothing is pickled, the table in the feedback store is the storage.

``raw_feedback`` and ``cleaned_feedback`` return a :class:`~feedback_pipeline.store.refs.TableRef`. A downstream
asset receives the reference to the table as it is now (one aggregate query), so a run that starts later, in
another process or on another machine, reads the same table; nothing of the rows is written under DAGSTER_HOME.
Consumers read what they need from the store (aggregates, a bounded sample, chunks, rows by id), never the rows
handed over as a frame.
"""

import warnings

import dagster as dg
import pandas as pd

from feedback_pipeline.store.cleaned import cleaned_ref, feedback_ref
from feedback_pipeline.store.refs import TableRef


# The table assets pass this IO manager with ``io_manager_def`` (a beta parameter of ``@asset``): its warning would
# print on every import of the definitions.
warnings.filterwarnings("ignore", message="Parameter `io_manager_def`", category=dg.BetaWarning)


class TableRefIOManager(dg.IOManager):
    def __init__(self, feedback_store):
        self.feedback_store = feedback_store

    def handle_output(self, context: dg.OutputContext, obj: TableRef) -> None:
        if not isinstance(obj, TableRef):
            raise TypeError(f"{context.asset_key.to_user_string()} must return a TableRef, got {type(obj).__name__}")

    def load_input(self, context: dg.InputContext) -> TableRef:
        name = context.upstream_output.asset_key.path[-1]
        wanted = getattr(context.dagster_type, "typing_type", None)
        if isinstance(wanted, type) and issubclass(wanted, pd.DataFrame):
            raise TypeError(f"{name} is a table handed over as a TableRef: annotate the input TableRef and read what "
                            "is needed from the store (store/cleaned.py), never the whole window as a frame")
        store = self.feedback_store.store()
        return feedback_ref(store) if name == "raw_feedback" else cleaned_ref(store)


@dg.io_manager(required_resource_keys={"feedback_store"},
               description="Table assets: the rows stay in the feedback store; downstream gets a TableRef.")
def table_ref_io_manager(init_context) -> TableRefIOManager:
    return TableRefIOManager(init_context.resources.feedback_store)
