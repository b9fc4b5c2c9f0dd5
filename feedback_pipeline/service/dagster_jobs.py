"""The running Dagster webserver, as the capture service sees it: launch, list, read and terminate runs of a job,
and read what the retraining sensor decides on. A thin wrapper over ``dagster_graphql.DagsterGraphQLClient``:
Dagster stays the only scheduler; this module keeps no state.

Errors: ``DagsterUnavailable`` (webserver unreachable, timed out or answering 5xx), ``RunNotFound``,
``RunNotTerminated`` (the run has already finished), ``LaunchRejected`` (bad run config, unknown job ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

# The client has no public query for a job's runs, a sensor's cursor or an asset's metadata: these three go
# through its ``_execute`` (the same transport, timeout and error wrapping as its public methods).
_RUNS_QUERY = """
query ServiceRuns($filter: RunsFilter, $limit: Int) {
  runsOrError(filter: $filter, limit: $limit) {
    __typename
    ... on Runs { results { runId jobName status creationTime startTime endTime tags { key value } } }
    ... on InvalidPipelineRunsFilterError { message }
    ... on PythonError { message }
  }
}"""
_SENSORS_QUERY = """
query ServiceSensors {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { sensors { name sensorState { typeSpecificData {
      ... on SensorData { lastCursor } } } } } }
    ... on PythonError { message }
  }
}"""
_LATEST_METADATA_QUERY = """
query ServiceLatestMaterialization($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    __typename
    ... on Asset { assetMaterializations(limit: 1) { metadataEntries {
      label ... on TextMetadataEntry { text } } } }
  }
}"""


class DagsterUnavailable(Exception):
    pass


class RunNotFound(Exception):
    pass


class RunNotTerminated(Exception):
    pass


class LaunchRejected(Exception):
    pass


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    job_name: str
    status: str  # DagsterRunStatus name: QUEUED, STARTED, SUCCESS, FAILURE, CANCELING, CANCELED ...
    created_at: float | None  # unix seconds
    started_at: float | None
    ended_at: float | None
    tags: dict[str, str]

    @classmethod
    def from_graphql(cls, run: dict) -> RunInfo:
        return cls(run["runId"], run["jobName"], run["status"], run.get("creationTime"), run.get("startTime"),
                   run.get("endTime"), {t["key"]: t["value"] for t in run.get("tags") or []})


class DagsterJobs:
    """One webserver at ``url`` (``http[s]://host[:port][/prefix]``); every call gives up after ``timeout_s``."""

    def __init__(self, url: str, timeout_s: int = 5):
        parts = urlsplit(url)
        self.url = url
        self._client = DagsterGraphQLClient(parts.hostname or "127.0.0.1", port_number=parts.port,
                                            use_https=parts.scheme == "https", timeout=timeout_s,
                                            path_prefix=parts.path.rstrip("/"))

    def _call(self, method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except DagsterGraphQLClientError as exc:
            kind = exc.args[0] if len(exc.args) == 2 else None  # typed errors are (typename, message)
            if kind in ("RunNotFoundError", "PipelineRunNotFoundError"):
                raise RunNotFound(exc.args[1]) from exc
            if kind == "TerminateRunFailure":
                raise RunNotTerminated(exc.args[1]) from exc
            if kind is not None and kind != "PythonError":
                raise LaunchRejected(f"{kind}: {exc.args[1]}") from exc
            cause = exc.__cause__ or exc
            raise DagsterUnavailable(f"Dagster webserver at {self.url} unavailable: "
                                     f"{type(cause).__name__}: {str(cause)[:300]}") from exc

    def _query(self, query: str, variables: dict | None = None) -> dict:
        return self._call(self._client._execute, query, variables)

    def launch(self, job_name: str, run_config: dict[str, Any] | None = None,
               tags: dict[str, str] | None = None) -> str:
        return self._call(self._client.submit_job_execution, job_name, run_config=run_config, tags=tags)

    def runs(self, job_name: str | None = None, run_ids: list[str] | None = None, limit: int = 20) -> list[RunInfo]:
        """Newest first."""
        run_filter = {k: v for k, v in (("pipelineName", job_name), ("runIds", run_ids)) if v is not None}
        result = self._query(_RUNS_QUERY, {"filter": run_filter, "limit": limit})["runsOrError"]
        if result["__typename"] != "Runs":
            raise DagsterUnavailable(f"Dagster could not list runs: {result.get('message')}")
        return [RunInfo.from_graphql(run) for run in result["results"]]

    def run(self, run_id: str) -> RunInfo:
        found = self.runs(run_ids=[run_id], limit=1)
        if not found:
            raise RunNotFound(f"no run {run_id}")
        return found[0]

    def terminate(self, run_id: str) -> str:
        """Ask Dagster to stop the run; returns its status afterwards (CANCELING or CANCELED)."""
        self._call(self._client.terminate_run, run_id)
        return self._call(self._client.get_run_status, run_id).value

    def sensor_cursor(self, sensor_name: str) -> str | None:
        result = self._query(_SENSORS_QUERY)["repositoriesOrError"]
        for repo in result.get("nodes", []):
            for sensor in repo["sensors"]:
                if sensor["name"] == sensor_name:
                    return (sensor["sensorState"]["typeSpecificData"] or {}).get("lastCursor")
        return None

    def latest_text_metadata(self, asset_key: str, label: str) -> str | None:
        """A text metadata entry of the asset's newest materialization (None without one)."""
        result = self._query(_LATEST_METADATA_QUERY, {"key": {"path": asset_key.split("/")}})["assetOrError"]
        for event in result.get("assetMaterializations", []):
            for entry in event["metadataEntries"]:
                if entry["label"] == label:
                    return entry.get("text")
        return None
