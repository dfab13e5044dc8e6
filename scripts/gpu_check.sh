#!/usr/bin/env bash
# One GPU check, ready to run on a GPU machine with Python 3.12, PyTorch and torchvision (no TensorFlow needed), to
# which a copy of the repository travels (about 6 minutes on one H100/H200):
#   1. tests/test_gpu.py: CPU-vs-GPU parity (miniature zoo and full-size synthetic models), bf16/fp16 attacks, the
#      same batch twice bit for bit (deterministic kernels), out of memory on the real device, the tapped forward
#      pass's memory, fused attention;
#   2. scripts/bench_memory.py: peak memory of the tapped forward pass against a plain one, every zoo model;
#   3. scripts/bench_engines.py: the paper's protocol (3 models × 100 images × PGD-100, synthetic checkpoints) in
#      float32 (TF32 off) and bf16, beside torchvision's resnet152 in the same call.
# Every figure goes to $OUT/gpu_check.md (and each step's log beside it); copy the tables into docs/performance.md.
# Each step has its own time limit and a failed step does not stop the others (the exit status says).
#
#   OUT=/tmp/gpu scripts/gpu_check.sh
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_IMAGES=2 GPU_CHECK_STEPS=2 GPU_CHECK_MODELS=ResNet GPU_CHECK_ZOO=mini \
#       scripts/gpu_check.sh            # the dry run on a CPU (tests/test_gpu.py runs it so)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
PYTHON=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
IMAGES=${GPU_CHECK_IMAGES:-100}
STEPS=${GPU_CHECK_STEPS:-100}
MODELS=${GPU_CHECK_MODELS:-ResNet ResNetDenoise ResNeXtDenoiseAll}
ZOO=${GPU_CHECK_ZOO:-imagenet}
MEMORY_IMAGES=${GPU_CHECK_MEMORY_IMAGES:-$([ "$DEVICE" = cpu ] && echo 2 || echo 32)}
mkdir -p "$OUT"
summary="$OUT/gpu_check.md"
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
export REPRO_SYNTHETIC_DIR=${REPRO_SYNTHETIC_DIR:-${TMPDIR:-/tmp}/repro-synthetic}   # made once, by the first step
# pytest is not always on such machines: pure-Python wheels carried in .gpu_wheels/ are importable as they are.
if ! "$PYTHON" -c "import pytest" 2>/dev/null && ls .gpu_wheels/*.whl >/dev/null 2>&1; then
    export PYTHONPATH="$(ls .gpu_wheels/*.whl | tr '\n' ':')${PYTHONPATH:-}"
fi
status=0
step() {          # step NAME LIMIT COMMAND...: run it with a time limit, log it, note the outcome in the summary
    local name=$1 limit=$2
    shift 2
    local began=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local code=$?
    echo "- $name: exit $code after $((SECONDS - began)) s" >> "$summary"
    [ "$code" = 0 ] || status=1
}
{
    echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
    "$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
    echo '```'
    echo
} > "$summary"

step pytest_gpu 210 env REPRO_GPU_DEVICE="$DEVICE" "$PYTHON" -m pytest -q -s -p no:cacheprovider -rs tests/test_gpu.py
grep -E "^(ResNet|fp16|parts|FAILED|ERROR|SKIPPED|E  )|passed|failed" "$OUT/pytest_gpu.log" | tail -n 40 | sed 's/^/    /' >> "$summary"
# shellcheck disable=SC2086
step bench_memory 110 "$PYTHON" scripts/bench_memory.py --device "$DEVICE" --zoo mini $ZOO --model $MODELS \
    --images "$MEMORY_IMAGES" --markdown "$summary" $([ "$DEVICE" = cpu ] || echo --check)
# shellcheck disable=SC2086
step bench_engines 270 "$PYTHON" scripts/bench_engines.py --model $MODELS --zoo "$ZOO" --device "$DEVICE" \
    --images "$IMAGES" --steps "$STEPS" --precision float32 bf16 --markdown "$summary"
echo >> "$summary"
echo "gpu_check: $( [ $status = 0 ] && echo passed || echo 'a step failed (see the logs)' )" >> "$summary"
cat "$summary"
exit $status
