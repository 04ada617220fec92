#!/usr/bin/env bash
# The CUDA checks and benchmarks in one run, for a machine with an NVIDIA GPU: the CUDA tests
# (training exactness on the GPU, the CUDA backends, no silent CPU fallback; a skipped test fails
# the run), the CPU + CUDA latency grid with the batch where CUDA overtakes the CPU, parity on
# both devices and training speed on the GPU. Every report lands in one folder.
#
#   benchmarks/cuda.sh [--out DIR] [--python PY] [--data-dir DIR] [--quick] [--dry-run]
#
#   --out DIR       where the reports go (default artifacts/bench/cuda)
#   --python PY     an interpreter whose torch sees the GPU, used as it is (the project is
#                   installed into it without dependencies) instead of building .venv with
#                   `make setup` and adding onnxruntime-gpu to it
#   --data-dir DIR  the Fashion-MNIST IDX files, where `make data` cannot fetch them
#   --quick         a shorter latency grid (batches 1, 100, 1000, 10000; 0.2 s a cell)
#   --dry-run       say what would run and whether this machine can run it; run nothing
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=artifacts/bench/cuda
PY=""
DATA=""
QUICK=0
DRY=0
usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
        --python) PY="${2:?--python needs an interpreter}"; shift 2 ;;
        --data-dir) DATA="${2:?--data-dir needs a folder}"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage ;;
        *) echo "cuda.sh: unknown argument $1" >&2; usage ;;
    esac
done

step=0
run() {  # run (or, with --dry-run, show) one step's command
    step=$((step + 1))
    echo "[$step] $*" >&2
    if [ "$DRY" = 0 ]; then "$@"; fi
}

# Preflight: a GPU the driver sees, before anything is installed or written.
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    gpu="$(nvidia-smi -L | head -n 1)"
    echo "GPU: $gpu" >&2
else
    gpu=""
    if [ "$DRY" = 0 ]; then
        echo "cuda.sh: no NVIDIA GPU here (nvidia-smi is missing or lists none); nothing was run" >&2
        exit 1
    fi
    echo "GPU: none here (nvidia-smi is missing or lists none): a real run stops at this point" >&2
fi

data_args=()
[ -n "$DATA" ] && data_args=(--data-dir "$DATA")
if [ -z "$PY" ]; then
    run make setup data
    PY=.venv/bin/python
    # ONNX Runtime's CUDA provider comes in its own package (the same module name): swap it in.
    ORT_VERSION="$("$PY" -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null || echo missing)"
    run "$PY" -m pip uninstall --quiet --yes onnxruntime
    run "$PY" -m pip install --quiet --no-deps "onnxruntime-gpu==${ORT_VERSION}"
else
    run "$PY" -m pip install --quiet --no-deps --no-build-isolation -e .
    run "$PY" -m fmnist_deploy.training.data "${data_args[@]}"
fi
run mkdir -p "$OUT"
if [ "$DRY" = 0 ]; then
    nvidia-smi -q >"$OUT/gpu.txt"
    "$PY" -c 'import json, torch; from fmnist_deploy.machine import environment
e = environment(); e["torch_cuda"] = torch.version.cuda; e["gpu"] = torch.cuda.get_device_name(0)
print(json.dumps(e, indent=2))' >"$OUT/environment.json"
else
    echo "[-] nvidia-smi -q > $OUT/gpu.txt; the environment (torch, CUDA, GPU name) > $OUT/environment.json" >&2
fi

# The CUDA tests; a skip means something the GPU run should have checked was not: it fails the run.
run "$PY" -m pytest -q -p no:cacheprovider -m cuda -rs --junitxml "$OUT/cuda-tests.xml" tests
run "$PY" -m fmnist_deploy.benchmarks.junit "$OUT/cuda-tests.xml"

grid=()
[ "$QUICK" = 1 ] && grid=(--batches 1,100,1000,10000 --budget 0.2 --ceiling-rounds 0)
bench=("$PY" -m fmnist_deploy.benchmarks.cli)
run "${bench[@]}" latency --device cpu --device cuda "${grid[@]}" "${data_args[@]}" --out-dir "$OUT"
run "${bench[@]}" parity --device cpu --device cuda "${data_args[@]}" --out-dir "$OUT"
run "${bench[@]}" train --device cuda "${data_args[@]}" --out-dir "$OUT"

if [ "$DRY" = 1 ]; then
    echo "dry run: nothing was run${gpu:+; this machine has $gpu}" >&2
else
    echo "reports in $OUT:" >&2
    ls -l "$OUT" >&2
fi
