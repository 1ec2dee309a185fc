#!/bin/bash
# Issue 19 run 2 on the device: kl_div scoring with and without prefix reuse, 3B random preset.
set -u
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
B=$PWD/.device-bundle/wtref
source $B/device-site $B/site.tar.xz > $OUT/site.txt 2>&1 || { cat $OUT/site.txt; echo "device-site failed"; exit 1; }
mkdir -p /tmp/fp8bench && tar -xzf $B/torch_extensions.tgz -C /tmp/fp8bench
export TORCH_EXTENSIONS_DIR=/tmp/fp8bench/torch_extensions
export PYTHONPATH=$PWD:$PYTHONPATH
{ date -u; python3 -V; git log --oneline -1 2>/dev/null; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nproc; } > $OUT/env.txt 2>&1
cat $OUT/env.txt
timeout 540 python3 .device-bundle/gpu19/bench_kl_prefix.py --device cuda --preset qwen2.5-vl-3b-random \
  --batch-size 4 --seq-len 1024 --calib-steps 1 --score-steps 8 ${ORDER:+--order $ORDER} --out $OUT/kl-3b.json > $OUT/kl-3b.log 2>&1
echo "rc=$?"
grep -v "^{" $OUT/kl-3b.log | grep -i "prefix reuse\|error\|Traceback\|warn" | tail -15
python3 -c "import json;d=json.load(open('$OUT/kl-3b.json'));d.pop('args');[r.pop('forwards',None) for r in d['runs'].values()];print(json.dumps(d,indent=1))"
ls $TORCH_EXTENSIONS_DIR/*/
