#!/usr/bin/env bash
# Submit the sweep to a running Ray cluster as a Ray Job. RAY_ADDRESS is the cluster's dashboard
# (job server) address, e.g. http://head:8265. OUTPUT must be on storage every node sees; the same
# OUTPUT in a later submission resumes the sweep. Extra arguments go to orchestrator.sweep.
#
#   RAY_ADDRESS=http://head:8265 scripts/submit_sweep.sh /shared/runs/3b http://head:5000 \
#       --config search_spaces/qwen2_5_vl_3b_fp8.yaml
#   ray job logs <id> --address $RAY_ADDRESS --follow      # progress, one line per trial
#   ray job stop <id> --address $RAY_ADDRESS               # stop; resubmit to resume
set -euo pipefail
: "${RAY_ADDRESS:?set RAY_ADDRESS to the cluster's job server, e.g. http://head:8265}"
output=${1:?usage: $0 OUTPUT TRACKING_URI [sweep args...]}
uri=${2:?usage: $0 OUTPUT TRACKING_URI [sweep args...]}
shift 2
cd "$(dirname "$0")/.."
exec ray job submit --address "$RAY_ADDRESS" --working-dir . ${SUBMIT_FLAGS:-} -- \
  python -m orchestrator.sweep --output "$output" --tracking-uri "$uri" "$@"
