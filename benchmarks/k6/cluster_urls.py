"""Print the gateway URL and the health monitor's ops URL of the cluster `dfms up` runs
on a data dir (for `make load`); exit 1 with a message when none is running there."""

from __future__ import annotations

import sys
from pathlib import Path

from dfms.localstack.cluster import read_cluster_file


def main(data_dir: str) -> int:
    info = read_cluster_file(Path(data_dir))
    state = info.get("state", "no cluster.json")
    if state != "ready":
        print(f"make load: no running cluster in {data_dir} (state: {state}). Start one "
              "with `make up` in another terminal, or point DATA_DIR at the data dir of "
              "the one you run.", file=sys.stderr)
        return 1
    monitor = info.get("services", {}).get("health-monitor", {}).get("ops_url", "")
    print(info["gateway_url"], monitor)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".dfms"))
