#!/usr/bin/env bash
# Spark GPU discovery script: prints the executor's GPU addresses as Spark expects,
# e.g. {"name": "gpu", "addresses": ["0", "1"]}. Requires nvidia-smi on the executor host.
set -euo pipefail
addresses=$(nvidia-smi --query-gpu=index --format=csv,noheader | sed -e 's/^ *//' -e 's/.*/"&"/' | paste -sd, -)
echo "{\"name\": \"gpu\", \"addresses\": [${addresses}]}"
