"""Command line: ``feedback-pipeline migrate | import | prepare-models | serve | simulate | keys | erase-user | summary |
models``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from feedback_pipeline.settings import load_settings


def _store(settings):
    from feedback_pipeline.store.repository import FeedbackStore

    return FeedbackStore(settings.feedback_db_url)


def cmd_migrate(settings, args) -> int:
    applied = _store(settings).migrate()
    print(f"migrations applied: {applied or 'none (up to date)'}")
    return 0


def cmd_import(settings, args) -> int:
    """Exit 0 when the import ran, even with rejected lines (listed on stderr); 2 when the file cannot be read or
    the database fails (the chunks committed before stay, and the summary says how many)."""
    import psycopg
    import sqlalchemy as sa

    from feedback_pipeline.ingestion.importers import READERS, ImportReport, import_records

    source = args.source or args.format
    report = ImportReport(source=source)
    try:
        store = _store(settings)
        store.migrate()
        import_records(store, READERS[args.format](Path(args.path)), source=source, report=report)
    except (OSError, sa.exc.SQLAlchemyError, psycopg.Error) as err:
        print(json.dumps(report.summary()))
        print(f"error: import stopped: {type(err).__name__}: {err}".splitlines()[0], file=sys.stderr)
        return 2
    print(json.dumps(report.summary()))
    shown = 20
    for problem in report.rejected[:shown]:
        print(f"rejected line {problem['line']}: {problem['field']}: {problem['reason']}", file=sys.stderr)
    if report.rejected_count > shown:
        print(f"... and {report.rejected_count - shown} more rejected lines", file=sys.stderr)
    return 1 if report.rejected_count and args.strict else 0


def cmd_prepare_models(settings, args) -> int:
    from feedback_pipeline.training.base_model import prepare_base_chat_model

    path = prepare_base_chat_model(settings.models_dir / "smollm2-135m-instruct", settings.chat_base_model)
    print(f"base chat model: {path}")
    return 0


def cmd_serve_api(settings, args) -> int:
    import uvicorn

    from feedback_pipeline.service.app import create_app

    print(f"feedback capture service on http://{args.host}:{args.port}/v1 (docs at /docs)", flush=True)
    # limit_concurrency answers 503 beyond FEEDBACK_MAX_CONNECTIONS; no Server header (no version disclosure).
    # Several workers need the app as an import string; each builds its own from the same environment.
    app = "feedback_pipeline.service.app:create_app" if settings.api_workers > 1 else create_app(settings)
    uvicorn.run(app, factory=settings.api_workers > 1, workers=settings.api_workers, host=args.host,
                port=args.port, server_header=False, log_level="warning", access_log=False,
                limit_concurrency=settings.max_connections, backlog=2048, timeout_keep_alive=5,
                timeout_graceful_shutdown=10)
    return 0


def cmd_simulate(settings, args) -> int:
    from feedback_pipeline.serving.simulate import UserModel, simulate

    like_by_arm = {}
    for item in filter(None, (args.like_by_arm or "").split(",")):
        arm, _, p = item.partition("=")
        like_by_arm[arm.strip()] = float(p)
    model = UserModel(like_by_arm=like_by_arm, prefer=args.prefer, threshold_chars=args.threshold_chars)
    report = simulate(args.url.rstrip("/"), args.key, args.users, model, seed=args.seed, max_tokens=args.max_tokens,
                      intent=args.intent, project=args.project)
    print(json.dumps({"simulated": True, "users": report.users, "served": dict(report.served),
                      "liked": dict(report.liked), "versions": dict(report.versions),
                      "errors": report.errors[:10], "error_count": len(report.errors)}, indent=2))
    return 0 if not report.errors else 1


def cmd_keys_create(settings, args) -> int:
    from feedback_pipeline.service.keys import create_key

    store = _release_store(settings)
    key_id, secret = create_key(store, args.name, args.scopes, origins=args.origins)
    bound = f", origins {','.join(args.origins)}" if args.origins else ""
    print(f"key {key_id} ({args.name}, scopes {args.scopes}{bound}); the secret is shown only now:", file=sys.stderr)
    print(secret)
    return 0


def cmd_keys_list(settings, args) -> int:
    from feedback_pipeline.service.keys import list_keys

    for key in list_keys(_release_store(settings)):
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        print(f"{key.id}  {key.name}  {','.join(sorted(key.scopes))}  created {key.created_at:%Y-%m-%d %H:%M}  {state}")
    return 0


def cmd_keys_revoke(settings, args) -> int:
    from feedback_pipeline.service.keys import revoke

    if not revoke(_release_store(settings), args.key_id):
        print(f"error: no active key {args.key_id}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}")
    return 0


def cmd_erase_user(settings, args) -> int:
    """Every copy of the user's feedback: the store's tables and the files under the data directory that hold their
    text (reports quoting them, datasets built from them); see ``store/erasure.py``."""
    from feedback_pipeline.store.erasure import erase_user

    print(erase_user(_store(settings), args.user_id, settings.data_dir).summary())
    return 0


def cmd_summary(settings, args) -> int:
    from feedback_pipeline.summary import pipeline_summary

    print(pipeline_summary(settings))
    return 0


# ---------------------------------------------------------------------------------------------- models (release)

def _registry(settings):
    from mlflow.tracking import MlflowClient

    return MlflowClient(settings.mlflow_tracking_uri)


def _model_names(settings) -> list[str]:
    from feedback_pipeline.release.models import REWARD_MODEL_NAME

    return [settings.chat_model_name, settings.embedding_model_name, REWARD_MODEL_NAME]


def _release_store(settings):
    store = _store(settings)
    store.migrate()  # the model_deployments table may be newer than the database
    return store


def cmd_models_list(settings, args) -> int:
    from feedback_pipeline.release.models import describe, list_versions

    for name in [args.name] if args.name else _model_names(settings):
        versions = list_versions(_registry(settings), name)
        print(f"{name}: {len(versions)} versions")
        for version in versions:
            print(f"  {describe(version)}")
    return 0


def cmd_models_show(settings, args) -> int:
    from feedback_pipeline.release.deployments import deployments
    from feedback_pipeline.release.models import describe, resolve

    version = resolve(_registry(settings), args.ref)
    print(describe(version))
    print(f"run: {version.run_id}  source: {version.source}")
    for key, value in sorted((version.tags or {}).items()):
        print(f"tag {key} = {value}")
    for row in deployments(_release_store(settings), version.name, version.version, limit=10):
        print(f"history: {row.line()}")
    return 0


def cmd_models_promote(settings, args) -> int:
    from feedback_pipeline.release.models import promote

    row = promote(_registry(settings), _release_store(settings), args.name, args.version, reason=args.reason,
                  actor=args.actor, source="manual")
    print(f"{args.name}@champion -> {row.version} (previous champion: {row.previous_champion_version or 'none'})")
    return 0


def cmd_models_approve(settings, args) -> int:
    from feedback_pipeline.release.models import approve

    row = approve(_registry(settings), _release_store(settings), args.name, args.version, actor=args.actor,
                  reason=args.reason)
    print(f"approved: {args.name}@champion -> {row.version} "
          f"(previous champion: {row.previous_champion_version or 'none'})")
    return 0


def cmd_models_rollback(settings, args) -> int:
    from feedback_pipeline.release.models import rollback

    row = rollback(_registry(settings), _release_store(settings), args.name, actor=args.actor, reason=args.reason)
    print(f"rolled back: {args.name}@champion -> {row.version} (was {row.previous_champion_version}); "
          f"previous_champion -> {row.evidence['previous_champion_now'] or 'removed'}")
    return 0


def cmd_models_lineage(settings, args) -> int:
    from feedback_pipeline.release.models import lineage

    print(lineage(_registry(settings), args.ref).to_text())
    return 0


def cmd_models_trained_on(settings, args) -> int:
    from feedback_pipeline.release.models import scan_trained_on

    scan = scan_trained_on(_registry(settings), _model_names(settings), args.feedback_id)
    for name, version, split in scan.matches:
        print(f"{name}/{version} trained on {args.feedback_id} ({split} split)")
    if not scan.matches:
        print(f"no registered version lists {args.feedback_id} in its dataset manifest")
    for name, version, why in scan.unknown:
        print(f"unknown: {name}/{version}: {why}")
    return 0


def cmd_models_cleanup(settings, args) -> int:
    from feedback_pipeline.release.cleanup import cleanup_datasets, cleanup_models, live_fingerprints
    from feedback_pipeline.release.models import current_user

    client, names = _registry(settings), _model_names(settings)
    report = cleanup_models(client, None if args.dry_run else _release_store(settings), names,
                            older_than_days=args.older_than_days, keep_last=args.keep_last, dry_run=args.dry_run,
                            actor=args.actor or current_user())
    print(report.to_markdown())
    datasets = cleanup_datasets(settings.datasets_dir, older_than_days=args.datasets_older_than_days,
                                mode=args.dataset_mode, protected_fingerprints=live_fingerprints(client, names),
                                dry_run=args.dry_run)
    print()
    print(datasets.to_markdown())
    return 0


def cmd_models_score_pairs(settings, args) -> int:
    import mlflow

    from feedback_pipeline.evaluation.reward_eval import score_pairs_file  # written alongside; import when used

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    result = score_pairs_file(args.model_ref, Path(args.path))

    def ci(key: str) -> str:
        value, low, high = (result.get(k) for k in (key, f"{key}_ci_low", f"{key}_ci_high"))
        if value is None:
            return "n/a"
        return f"{value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else "")

    print(f"pairs scored: {result.get('n_pairs')} (skipped {result.get('n_skipped', 0)})")
    print(f"reward model accuracy: {ci('accuracy')}; longer-answer rule: {ci('length_rule_accuracy')}")
    print(f"model - rule: {ci('difference_vs_length_rule')}; "
          f"beats the length rule: {'yes' if result.get('beats_length_rule') else 'no'}")
    print(json.dumps(result, default=str))  # last line: machine-readable
    return 0


def _user_errors(func):
    """A release command that cannot do what was asked says why on stderr and exits 1 (no traceback)."""
    def run(settings, args) -> int:
        from feedback_pipeline.release.models import ReleaseError

        try:
            return func(settings, args)
        except (ReleaseError, ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return run


def _add_models_parser(sub) -> None:
    actor = argparse.ArgumentParser(add_help=False)
    actor.add_argument("--actor", help="who acts (default: the current user)")
    reason = argparse.ArgumentParser(add_help=False)
    reason.add_argument("--reason", help="why, stored with the decision")
    models = sub.add_parser("models", help="registered model versions: list, promote, roll back, lineage, cleanup")
    msub = models.add_subparsers(dest="models_command", required=True)
    cmd = msub.add_parser("list", help="versions with aliases and gate decisions")
    cmd.add_argument("name", nargs="?", help="registered model (default: chat, embedder and reward models)")
    cmd.set_defaults(func=_user_errors(cmd_models_list))
    cmd = msub.add_parser("show", help="one version: tags and decision history")
    cmd.add_argument("ref", help="NAME@ALIAS or NAME/VERSION")
    cmd.set_defaults(func=_user_errors(cmd_models_show))
    for verb, func, text in (("promote", cmd_models_promote, "make VERSION the champion (manual decision)"),
                             ("approve", cmd_models_approve, "promote a version the gate marked needs_review")):
        cmd = msub.add_parser(verb, help=text, parents=[actor, reason])
        cmd.add_argument("name")
        cmd.add_argument("version")
        cmd.set_defaults(func=_user_errors(func))
    cmd = msub.add_parser("rollback", help="champion goes back to previous_champion", parents=[actor, reason])
    cmd.add_argument("name")
    cmd.set_defaults(func=_user_errors(cmd_models_rollback))
    cmd = msub.add_parser("lineage", help="run, dataset, row counts and feedback-id manifest of a version")
    cmd.add_argument("ref", help="NAME@ALIAS or NAME/VERSION")
    cmd.set_defaults(func=_user_errors(cmd_models_lineage))
    cmd = msub.add_parser("trained-on", help="which versions were trained on one feedback id (erasure)")
    cmd.add_argument("feedback_id")
    cmd.set_defaults(func=_user_errors(cmd_models_trained_on))
    cmd = msub.add_parser("cleanup", help="archive old unaliased versions and old datasets", parents=[actor])
    cmd.add_argument("--dry-run", action="store_true", help="report what would go, change nothing")
    cmd.add_argument("--older-than-days", type=int, default=90)
    cmd.add_argument("--keep-last", type=int, default=3, help="versions per model never archived")
    cmd.add_argument("--datasets-older-than-days", type=int, default=182)
    cmd.add_argument("--dataset-mode", choices=["archive", "delete"], default="archive")
    cmd.set_defaults(func=_user_errors(cmd_models_cleanup))
    cmd = msub.add_parser("score-pairs", help="score preference pairs with a reward model; last line is JSON")
    cmd.add_argument("model_ref", help="NAME@ALIAS, NAME/VERSION or a models:/ URI")
    cmd.add_argument("path", help="JSONL file of pairs")
    cmd.set_defaults(func=_user_errors(cmd_models_score_pairs))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feedback-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply the SQL migrations in sql/ to FEEDBACK_DB_URL").set_defaults(func=cmd_migrate)
    imp = sub.add_parser("import", help="import feedback from a file into the store (idempotent)")
    imp.add_argument("format", choices=["jsonl", "csv", "oasst1", "feedbackqa"])
    imp.add_argument("path", help="file (jsonl, csv, oasst1) or folder (feedbackqa)")
    imp.add_argument("--source", help="source name stored with each row (default: the format)")
    imp.add_argument("--strict", action="store_true", help="exit 1 when any row was rejected")
    imp.set_defaults(func=cmd_import)
    sub.add_parser("prepare-models", help="convert the bundled base chat model once").set_defaults(func=cmd_prepare_models)
    for name in ("serve", "serve-api"):  # serve-api: the name of the first release of this service
        api = sub.add_parser(name, help="run the capture service (FastAPI + uvicorn: /v1, docs at /docs)")
        api.add_argument("--host", default="127.0.0.1")
        api.add_argument("--port", type=int, default=8000)
        api.set_defaults(func=cmd_serve_api)
    sim = sub.add_parser("simulate", help="SIMULATED users: chat through the router, send feedback through the "
                                          "capture API (source=simulated)")
    sim.add_argument("--url", default="http://127.0.0.1:8000", help="the running service (SERVING_ENABLED=1)")
    sim.add_argument("--key", required=True, help="a write key")
    sim.add_argument("--users", type=int, default=200)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--like-by-arm", help="known like-probability per arm, e.g. A=0.80,B=0.83")
    sim.add_argument("--prefer", choices=["none", "shorter", "longer"], default="none",
                     help="else users like answers by length (0.9 when it has the property, 0.2 otherwise)")
    sim.add_argument("--threshold-chars", type=int, default=40)
    sim.add_argument("--max-tokens", type=int, default=16)
    sim.add_argument("--intent")
    sim.add_argument("--project")
    sim.set_defaults(func=cmd_simulate)
    keys = sub.add_parser("keys", help="API keys of the capture service: create, list, revoke")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    cmd = ksub.add_parser("create", help="new key; prints its secret once")
    cmd.add_argument("name")
    cmd.add_argument("--scopes", default="write", help="comma-separated: write, read, admin (default: write)")
    cmd.add_argument("--origin", dest="origins", action="append", metavar="URL",
                     help="browser origin allowed to use the key, e.g. https://chat.example (repeatable); "
                          "without it the key works from any caller")
    cmd.set_defaults(func=_user_errors(cmd_keys_create))
    ksub.add_parser("list", help="all keys (never their secrets)").set_defaults(func=cmd_keys_list)
    cmd = ksub.add_parser("revoke", help="revoke one key by id")
    cmd.add_argument("key_id")
    cmd.set_defaults(func=cmd_keys_revoke)
    era = sub.add_parser("erase-user", help="delete every copy of one user's feedback (tables, reports, datasets)")
    era.add_argument("user_id")
    era.set_defaults(func=cmd_erase_user)
    sub.add_parser("summary", help="print the latest pipeline results").set_defaults(func=cmd_summary)
    _add_models_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(load_settings(), args)


if __name__ == "__main__":
    sys.exit(main())
