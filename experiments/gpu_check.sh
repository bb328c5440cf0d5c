#!/usr/bin/env bash
# The GPU check on a single-GPU machine without network (docs/benchmarks.md, "GPU check"):
# installs the packages that machine lacks from the wheel folder .whl/ (built beforehand, see the docs),
# then runs experiments/gpu_check.py with `pytest -m gpu` first. Within 8 minutes; results in $OUT or
# outputs/gpu_check: gpu_check.json, gpu_check.md and the pytest log.
#   bash experiments/gpu_check.sh [extra gpu_check.py arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT_DIR=${OUT:-outputs/gpu_check}
mkdir -p "$OUT_DIR"
if [ -d .whl ]; then  # hydra-core, omegaconf, kornia, zennit, wandb, elpv-dataset and what they need
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  echo "no .whl/ folder: using the packages already installed" >&2
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
timeout 480 "$PYTHON" experiments/gpu_check.py --device cuda --pytest --out "$OUT_DIR" "$@" 2>&1 \
  | tee "$OUT_DIR/gpu_check.log"
