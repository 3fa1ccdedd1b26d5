"""Launch a backfill of every pilot partition through a running Dagster webserver's GraphQL API, and wait for it.

    python deploy/backfill_pilots.py [http://127.0.0.1:3000]

What a user does in the UI (Assets → pilots → Materialize → all partitions), as a script: one asset backfill over
``pilots/regime_runs`` (regime × size) and ``pilots/mixture_runs`` (ratios). The daemon queues one run per partition;
the ``cpt_training`` pool keeps them from oversubscribing the machine. Exits non-zero unless every run succeeds.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionSetNotFoundError { message }
    ... on UnauthorizedError { message }
  }
}"""

STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numPartitions runs(limit: 1000) { runId status } }
    ... on PythonError { message }
  }
}"""

ASSETS = [{"path": ["pilots", "regime_runs"]}, {"path": ["pilots", "mixture_runs"]}]
DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def graphql(url: str, query: str, variables: dict) -> dict:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(f"{url}/graphql", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = json.load(response)
    except urllib.error.HTTPError as exc:  # the server's own words (e.g. a GraphQL validation error) say why
        raise RuntimeError(f"{url}/graphql answered {exc.code}: {exc.read().decode(errors='replace')[:2000]}") from exc
    if payload.get("errors"):
        raise RuntimeError(payload["errors"])
    return payload["data"]


def main(url: str = "http://127.0.0.1:3000") -> int:
    start = time.time()
    launched = graphql(url, LAUNCH, {"params": {"assetSelection": ASSETS, "allPartitions": True}})
    result = launched["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        print(f"backfill not launched: {result}")
        return 1
    backfill = result["backfillId"]
    print(f"backfill {backfill} launched", flush=True)
    while True:
        time.sleep(10)
        status = graphql(url, STATUS, {"id": backfill})["partitionBackfillOrError"]
        runs = status.get("runs", [])
        counts: dict[str, int] = {}
        for run in runs:
            counts[run["status"]] = counts.get(run["status"], 0) + 1
        print(f"{time.time() - start:6.0f} s  backfill {status.get('status')}  runs {counts}", flush=True)
        if status.get("status") in DONE:
            ok = status["status"] in ("COMPLETED", "COMPLETED_SUCCESS") and set(counts) == {"SUCCESS"}
            print(f"backfill {status['status']} in {time.time() - start:.0f} s: {len(runs)} runs {counts}")
            return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
