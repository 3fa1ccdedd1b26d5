#!/bin/bash
# The lineage audit end to end (issue 13): a demo on a copy of the sample corpora and its audit; one changed record
# of the domain pool and a second demo; then the check that the first version's report did not change, and the
# reverse query for the changed file.
#   WORK=/tmp/x bash benchmarks/audit_demo.sh   (two full demos: ~10-25 min on 2 cores; run `make install` first)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${WORK:-/tmp/cptdata-audit-demo}
export CPTDATA_HOME=$W/home CPTDATA_CORPORA=$W/corpora CPTDATA_PROFILE=quickstart SPARK_LOCAL_IP=127.0.0.1
rm -rf "$W" && mkdir -p "$W/corpora" && cp ../shared/corpora/*.gz "$W/corpora/"
cptdata() { .venv/bin/cptdata "$@" 2>>"$W/audit.err"; }

s=$(date +%s); cptdata demo > "$W/demo1.log" || echo "demo 1 exit $?"; echo "demo 1: $(( $(date +%s) - s )) s"
cptdata audit > "$W/audit_v0.md"
cptdata audit dataset/cpt_mixture@0 --json > "$W/audit_v0_before.json"

CHANGED=$W/corpora/med_medquad.jsonl.gz .venv/bin/python - <<'PY'
import gzip, json, os
path = os.environ["CHANGED"]
lines = gzip.open(path, "rt").read().splitlines()
first = json.loads(lines[0])
first["text"] = "Revised by the editors in December 2026. " + first["text"]
with gzip.open(path, "wt") as f:
    f.write("\n".join([json.dumps(first), *lines[1:]]) + "\n")
PY

s=$(date +%s); cptdata demo > "$W/demo2.log" || echo "demo 2 exit $?"; echo "demo 2: $(( $(date +%s) - s )) s"
cptdata audit > "$W/audit_v1.md"
cptdata audit dataset/cpt_mixture@0 --json > "$W/audit_v0_after.json"
cmp "$W/audit_v0_before.json" "$W/audit_v0_after.json" && echo "the report of dataset v0 is unchanged"
cptdata audit --uses "$W/corpora/med_medquad.jsonl.gz" > "$W/uses.md"
echo "reports in $W: audit_v0.md, audit_v1.md, uses.md"
