"""Renders the lecture-shaped report.html in headless Chromium (Debian
package `chromium`): exit 0, the expected text in the rendered DOM, and a
screenshot (QTOOL_BUILD_DIR/report_lecture.png) to look at. Skipped (77)
with the reason when Chromium is not installed."""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import html_check  # noqa: E402
from test_report import lecture_results  # noqa: E402

QTOOL = os.environ.get("QTOOL_BIN", "qtool")


def main():
    if not html_check.chromium_binary():
        print("skipped: chromium is not installed (apt-get install chromium)")
        sys.exit(77)
    with tempfile.TemporaryDirectory() as d:
        json.dump(lecture_results(), open(f"{d}/results.json", "w"))
        subprocess.run([QTOOL, "report", d], check=True, capture_output=True)
        shot = os.path.join(os.environ.get("QTOOL_BUILD_DIR", d), "report_lecture.png")
        problems, _ = html_check.render(
            f"{d}/report.html",
            ["Recommended", "encoder / fp16", "Counterfactuals", "Pareto frontiers", "Latency vs macro-F1",
             "Peak VRAM vs macro-F1", "Per-tier accuracy deltas", "6\u2020", "flipped predictions", "Named-class trajectories",
             "credit_card_late_fee", "needs compute capability", "Split-val"],
            screenshot=shot)
    for p in problems:
        print("FAIL:", p)
    if problems:
        sys.exit(1)
    print(f"ok; screenshot: {shot}")


if __name__ == "__main__":
    main()
