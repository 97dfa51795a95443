"""Take the picture of an upload's trace in the local trace UI for the docs.

Against a cluster started with ``dfms up --observability`` (Phoenix installed by
``make trace-ui``) that has served at least one upload of new bytes, this finds the most
recent upload trace that reached the storage nodes (it has ``s3 put`` spans), opens it in
Phoenix with headless Chromium (Debian's ``chromium``) and writes a PNG.

Usage: ``python tools/trace_screenshot.py --data-dir .dfms [--out docs/trace-view.png]``

Chromium is held to loopback (every other host name resolves to nothing, background
services off): the page must come from the local Phoenix alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

UPLOAD_ROUTE = "POST /api/v1/files/upload"
WINDOW = "1600,1300"
RENDER_BUDGET_MS = 20_000  # virtual time for the single-page app to load and settle
LOOPBACK_ONLY = [
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--disable-background-networking", "--disable-component-update",
    "--disable-domain-reliability", "--disable-sync", "--no-first-run",
    "--no-default-browser-check", "--metrics-recording-only",
]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.load(resp)


def spans(api: str, **params: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"limit": "1000", **params})
    return list(get_json(f"{api}?{query}")["data"])


def upload_trace(api: str) -> str:
    """The newest upload trace holding S3 puts (a dedup hit writes none)."""
    for root in spans(api, name=UPLOAD_ROUTE):
        trace_id = str(root["context"]["trace_id"])
        if any(s["name"] == "s3 put" for s in spans(api, trace_id=trace_id)):
            return trace_id
    raise SystemExit("no upload of new bytes has been traced yet: upload a file first")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(".dfms"))
    parser.add_argument("--out", type=Path, default=Path("docs/trace-view.png"))
    args = parser.parse_args()
    info = json.loads((args.data_dir / "cluster.json").read_text())
    ui = info.get("trace_ui")
    if not ui:
        raise SystemExit("that cluster has no trace UI: start it with `dfms up "
                         "--observability` after `make trace-ui`")
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium: apt-get install --no-install-recommends "
                         "chromium")
    trace_id = upload_trace(ui["spans_api"])
    project = get_json(f"{ui['url']}/v1/projects/default")["data"]["id"]
    page = f"{ui['url']}/projects/{project}/traces/{trace_id}"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", f"--window-size={WINDOW}",
                    f"--virtual-time-budget={RENDER_BUDGET_MS}", *LOOPBACK_ONLY,
                    f"--screenshot={args.out.resolve()}", page],
                   check=True, capture_output=True)
    print(f"{args.out}: trace {trace_id} ({page})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
