#!/usr/bin/env bash
# Every CUDA check and GPU benchmark of equivit in one run (about 8 minutes on one H100):
#   1. the CUDA tests (tests/test_cuda.py): exact under shifts on real photos, the same top-1 as
#      on the CPU, no host sync in a forward pass or a training step (natural and fully tied
#      inputs, CUDA's sync debug mode set to raise), CUDA graphs captured under reduce-overhead;
#   2. the anchor against a clone of the same tensor (benchmarks/bench_anchor.py --device cuda);
#   3. stock timm against converted, forward and training step, eager, compiled and
#      reduce-overhead, batch 8 and 64 (benchmarks/bench_gpu.py), as JSON and Markdown.
# Logs and tables go to $OUT when it is set, else to benchmarks/results/gpu/.
#
#     bash benchmarks/gpu_check.sh          # or: python run.py gpu
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
RESULTS=${OUT:-benchmarks/results/gpu}
mkdir -p "$RESULTS"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"

"$PYTHON" - <<'PY' || exit 2
import importlib.util, sys
import torch
missing = [name for name in ("timm", "pytest", "hypothesis", "skimage") if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"missing packages: {', '.join(missing)} (python run.py gpu installs them)")
if not torch.cuda.is_available():
    sys.exit("no CUDA device: this script checks and times equivit on a GPU")
print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
PY

status=0
started=$SECONDS
timeout 210 "$PYTHON" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider 2>&1 | tee "$RESULTS/cuda_tests.log" || status=1
echo "CUDA tests: $((SECONDS - started)) s"
timeout 60 "$PYTHON" benchmarks/bench_anchor.py --device cuda --repeats 15 2>&1 | tee "$RESULTS/bench_anchor.md" || status=1
left=$((450 - (SECONDS - started)))
if [ "$left" -lt 60 ]; then left=60; fi
timeout $((left + 30)) "$PYTHON" benchmarks/bench_gpu.py --budget-s "$left" \
    --json "$RESULTS/gpu_bench.json" --markdown "$RESULTS/gpu_bench.md" 2>&1 | tee "$RESULTS/bench_gpu.log" || status=1
echo "total: $((SECONDS - started)) s, status $status"
exit $status
