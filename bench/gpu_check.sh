#!/usr/bin/env bash
# The GPU check of issue 18, for a machine with an NVIDIA GPU, at most ~8 minutes: installs
# onnxruntime-gpu and what the repository needs (into the current Python, or the repository's
# .venv when it exists), then runs bench/gpu_check.py and prints one table.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  PROVIDER=CUDAExecutionProvider
  "$PY" -m pip install -q --disable-pip-version-check "onnxruntime-gpu>=1.17" || true
else
  echo "no NVIDIA GPU here: the same code path on the CPU provider"
  PROVIDER=CPUExecutionProvider
fi
"$PY" -c "import onnx, pydantic_settings, cv2" 2>/dev/null || \
  "$PY" -m pip install -q --disable-pip-version-check onnx onnxscript pydantic-settings opencv-python-headless tqdm
exec timeout 480 "$PY" bench/gpu_check.py --provider "$PROVIDER" "$@"
