"""Screenshot of the feedback widget's /demo page, copied to bench/results/widget_demo.png.

    .venv/bin/python bench/widget_demo.py

Runs the browser test that takes it (feedback_pipeline_tests/test_widget.py::test_demo_page_screenshot: the real
service, Debian's headless chromium) with FEEDBACK_TEST_ARTIFACTS pointing at a temporary folder, then copies the
picture. The test itself never writes into the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "bench" / "results" / "widget_demo.png"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        test = "feedback_pipeline_tests/test_widget.py::test_demo_page_screenshot"
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", test], cwd=ROOT,
                              env={**os.environ, "FEEDBACK_TEST_ARTIFACTS": tmp})
        if done.returncode != 0:
            return done.returncode
        TARGET.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "widget_demo.png", TARGET)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
