"""Command line: ``feedback-pipeline migrate | import | prepare-models | serve | erase-user | summary``."""

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
    from feedback_pipeline.ingestion.importers import READERS, import_records

    store = _store(settings)
    store.migrate()
    report = import_records(store, READERS[args.format](Path(args.path)), source=args.source or args.format)
    print(json.dumps(report.summary()))
    for problem in report.rejected[:20]:
        print(f"rejected line {problem['line']}: {problem['field']}: {problem['reason']}", file=sys.stderr)
    return 1 if report.rejected and args.strict else 0


def cmd_prepare_models(settings, args) -> int:
    from feedback_pipeline.training.base_model import prepare_base_chat_model

    path = prepare_base_chat_model(settings.models_dir / "smollm2-135m-instruct", settings.chat_base_model)
    print(f"base chat model: {path}")
    return 0


def cmd_serve(settings, args) -> int:
    from feedback_pipeline.ingestion.http_api import make_server

    server = make_server(_store(settings), args.host, args.port)
    print(f"feedback API on http://{args.host}:{server.server_port}/feedback", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_erase_user(settings, args) -> int:
    print(f"deleted {_store(settings).delete_user(args.user_id)} feedback rows of {args.user_id}")
    return 0


def cmd_summary(settings, args) -> int:
    from feedback_pipeline.summary import pipeline_summary

    print(pipeline_summary(settings))
    return 0


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
    srv = sub.add_parser("serve", help="run the HTTP feedback endpoint")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8080)
    srv.set_defaults(func=cmd_serve)
    era = sub.add_parser("erase-user", help="delete every feedback row of one user")
    era.add_argument("user_id")
    era.set_defaults(func=cmd_erase_user)
    sub.add_parser("summary", help="print the latest pipeline results").set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(load_settings(), args)


if __name__ == "__main__":
    sys.exit(main())
