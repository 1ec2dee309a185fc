#!/usr/bin/env bash
# Submit the sweep to a running Ray cluster as a Ray Job. RAY_ADDRESS is the cluster's dashboard
# (job server) address, e.g. http://head:8265. OUTPUT must be on storage every node sees (a
# relative one is made absolute here: the job runs in an uploaded copy of this checkout); the same
# OUTPUT in a later submission resumes the sweep. Extra arguments go to orchestrator.sweep, and
# SUBMIT_FLAGS (split on spaces) to `ray job submit`, e.g. SUBMIT_FLAGS=--no-wait.
#
#   RAY_ADDRESS=http://head:8265 scripts/submit_sweep.sh /shared/runs/3b http://head:5000 \
#       --config search_spaces/qwen2_5_vl_3b_fp8.yaml
#   ray job logs <id> --address $RAY_ADDRESS --follow      # progress, one line per trial
#   ray job stop <id> --address $RAY_ADDRESS               # stop; resubmit to resume
#
# tests/e2e/test_cluster.py submits it to a loopback cluster; tests/unit/test_scripts.py checks
# that it parses (bash -n) and passes shellcheck.
set -euo pipefail
: "${RAY_ADDRESS:?set RAY_ADDRESS to the job server of the cluster, e.g. http://head:8265}"
output=$(realpath -m "${1:?usage: $0 OUTPUT TRACKING_URI [sweep args...]}")
uri=${2:?usage: $0 OUTPUT TRACKING_URI [sweep args...]}
shift 2
read -ra submit_flags <<< "${SUBMIT_FLAGS:-}"
cd "$(dirname "$0")/.."
exec ray job submit --address "$RAY_ADDRESS" --working-dir . "${submit_flags[@]}" -- \
  python -m orchestrator.sweep --output "$output" --tracking-uri "$uri" "$@"
