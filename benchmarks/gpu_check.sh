#!/usr/bin/env bash
# Issue 18's one prepared GPU check: writes benchmarks/results/gpu-<device>/ (report.md + gpu_check.json).
#   bash benchmarks/gpu_check.sh            one CUDA GPU, about 8 minutes (hard limit 9)
#   bash benchmarks/gpu_check.sh --dry-run  the CPU with tiny sizes: checks the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
exec timeout 540 "$PY" benchmarks/gpu_check.py "$@"
