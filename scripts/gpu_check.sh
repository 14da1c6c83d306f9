#!/usr/bin/env bash
# GPU check: on one CUDA GPU, run what the CPU machines cannot:
#   1. train.py --accelerator gpu, one epoch, in 32-true, 16-mixed and bf16-mixed;
#   2. the classic recipe's 10 epochs (training time from EpochSpeed's per-epoch seconds) and
#      cnn-fast on the GPU, each as a whole process (wall time) with its test accuracy;
#   3. the benchmark's epoch cases on --device cuda (1 round, 3 repeats);
#   4. --compile, and CUDA graphs (torch.compile(mode="reduce-overhead")) on a bare training step.
#   5. one epoch with --batch-size auto (Lightning's batch-size finder), the size it found in the table.
# It prints one table at the end and exits non-zero if any step failed.
#
#   scripts/gpu_check.sh [DATA_DIR]      (default: $LIT_MNIST_DATA_DIR, else ../shared/data)
set -uo pipefail
# a DATA_DIR argument is relative to where the script is called from; the default, to the repository
DATA_ARG="${1:+$(realpath -m -- "$1")}"
cd "$(dirname "$0")/.."

DATA="${DATA_ARG:-${LIT_MNIST_DATA_DIR:-../shared/data}}"
OUT="$(mktemp -d -t lit_mnist_gpu_check.XXXXXX)"
PY="${PYTHON:-python}"
failed=0
rows=()

if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "gpu_check.sh: $PY cannot import torch; activate the project's virtualenv (or set PYTHON=...)" >&2
    exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA GPU is visible (torch.cuda.is_available() is False); run it on a GPU machine" >&2
    exit 2
fi
GPU="$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")"

# run NAME CMD...: time a whole process, keep its output, add a row (status, seconds, test accuracy)
run() {
    local name="$1"; shift
    local log="$OUT/${name//[^A-Za-z0-9_-]/_}.log"
    local start end status acc found
    start=$(date +%s.%N)
    "$@" >"$log" 2>&1
    status=$?
    end=$(date +%s.%N)
    acc="$(grep -o 'Test accuracy: [0-9.]*%' "$log" | tail -1 | cut -d' ' -f3)"
    found="$(grep -o 'Batch-size finder: --batch-size [0-9]*' "$log" | tail -1 | cut -d' ' -f4)"
    [ -n "$found" ] && acc="$acc (batch size $found)"
    rows+=("$(printf '%-34s %-6s %8.1f s  %s' "$name" "$([ $status = 0 ] && echo ok || echo FAIL)" \
        "$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')" "${acc:--}")")
    if [ $status != 0 ]; then
        failed=1
        echo "--- $name failed (exit $status); the end of its output:" >&2
        tail -20 "$log" >&2
    fi
}

train() { "$PY" scripts/train.py --data-dir "$DATA" --accelerator gpu --devices 1 --no-progress-bar "$@"; }

for precision in 32-true 16-mixed bf16-mixed; do
    run "1 epoch, $precision" train --max-epochs 1 --precision "$precision" --log-dir "$OUT/p-$precision"
done
run "classic recipe, 10 epochs" train --recipe classic --log-dir "$OUT/classic"
run "cnn-fast recipe" train --recipe cnn-fast --log-dir "$OUT/cnn-fast"
run "cnn-fast recipe, --compile" train --recipe cnn-fast --compile --log-dir "$OUT/cnn-fast-compile"
run "1 epoch, --batch-size auto" train --max-epochs 1 --batch-size auto --log-dir "$OUT/bs-auto"
run "benchmark epochs, --device cuda" "$PY" scripts/benchmark.py --data-dir "$DATA" --device cuda \
    --rounds 1 --repeats 3 --json "$OUT/bench.json"

# CUDA graphs: compile a bare training step of the CNN with mode="reduce-overhead" and time it
run "torch.compile reduce-overhead step" "$PY" - <<'EOF'
import time, torch
from lit_mnist.networks import CNN
net = CNN().cuda()
opt = torch.optim.Adam(net.parameters(), lr=1e-3, capturable=True)
x = torch.randn(128, 1, 28, 28, device="cuda"); y = torch.randint(0, 10, (128,), device="cuda")
def step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    return loss
for mode, fn in (("eager", step), ("reduce-overhead", torch.compile(step, mode="reduce-overhead"))):
    t0 = time.perf_counter()
    for _ in range(3):
        fn()
    torch.cuda.synchronize(); warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(200):
        fn()
    torch.cuda.synchronize()
    print(f"{mode}: first 3 steps {warm:.2f} s, then {(time.perf_counter() - t0) / 200 * 1e3:.3f} ms/step")
EOF

# the classic recipe's training time: the sum over epochs of EpochSpeed's epoch time less its validation time
TRAIN_S="$("$PY" - "$OUT/classic" <<'EOF'
import csv, glob, sys
rows = [r for f in glob.glob(sys.argv[1] + "/version_*/metrics.csv") for r in csv.DictReader(open(f))]
secs = [float(r["perf/epoch_time_s"]) - float(r["perf/val_time_s"]) for r in rows if r.get("perf/epoch_time_s")]
print(f"{sum(secs):.2f}" if secs else "-")
EOF
)" || { echo "--- the classic recipe's training time could not be read from its metrics.csv" >&2; failed=1; }

echo
echo "GPU check on $GPU, $(date -u +%Y-%m-%dT%H:%MZ), logs in $OUT"
printf '%-34s %-6s %10s  %s\n' "step" "status" "wall" "test accuracy"
printf '%s\n' "${rows[@]}"
echo "classic recipe, training time of its 10 epochs (EpochSpeed): ${TRAIN_S} s (goal <= 2 s)"
grep -h "ms/step" "$OUT"/torch_compile_reduce-overhead_step.log 2>/dev/null
if [ -f "$OUT/bench.json" ]; then
    "$PY" -c "
import json,sys; r=json.load(open(sys.argv[1]))
print('benchmark ratios:', {k: round(v, 2) if isinstance(v, float) else v for k, v in r.get('ratios', {}).items()})" \
        "$OUT/bench.json" || { echo "--- the benchmark's ratios could not be read from $OUT/bench.json" >&2; failed=1; }
fi
exit $failed
