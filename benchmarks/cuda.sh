#!/usr/bin/env bash
# The CUDA checks and benchmarks in one run, for a machine with an NVIDIA GPU, and the offline bundle
# that carries everything such a machine lacks. Every step runs under `timeout` (the run as a whole
# within --budget seconds), logs to OUT/logs, and a failed step does not stop the rest; the reports
# land in one folder, packed as OUT.tar.gz at the end, with summary.md holding the targets.
#
#   benchmarks/cuda.sh [--output DIR] [--python PY [--offline [--from DIR]]] [--data-dir DIR] [--quick]
#                      [--budget S] [--dry-run]
#   benchmarks/cuda.sh --bundle DIR [--target-packages FILE] [--python-version X.Y] [--without-project]
#                      [--wheels-from DIR] [--max-size 64M] [--ort-gpu VERSION [--split-size 60M]
#                      [--parts-dir DIR]] [--data-dir DIR] [--dry-run]
#
#   --output DIR     where the reports go (default artifacts/bench/cuda; --out is the old name)
#   --python PY      an interpreter whose torch sees the GPU, used as it is; without --offline the
#                    project is installed into it (pip install -e .); without --python, .venv is built
#                    with `make setup` and onnxruntime-gpu swapped in (needs the internet)
#   --offline        install nothing from the network: a virtual environment over PY's packages gets
#                    the bundle's wheels (split ones joined first) and the project, without an index
#   --from DIR       the bundle holding data/ and wheels/ (default: the folder above this project, as
#                    a bundle lays it out)
#   --data-dir DIR   the Fashion-MNIST IDX files (.gz or plain; default with --offline: FROM/data; for
#                    --bundle: /usr/share/datasets/fashion-mnist)
#   --quick          a shorter latency grid (batches 1, 100, 1000, 10000; 0.2 s a cell)
#   --budget S       seconds the whole run may take (default 480); a step gets what is left
#   --dry-run        say what would run, step by step, and whether this machine can; run nothing
#   --bundle DIR     write the offline bundle: DIR/project (this tree), DIR/data (the gz files),
#                    DIR/wheels (what the target lacks), DIR/README.txt; at most --max-size
#   --target-packages FILE  the target's `pip list` output (default benchmarks/gpu-machine-packages.txt)
#   --python-version X.Y    the target's Python, for `pip download` (default 3.12)
#   --without-project       leave DIR/project out (when the tree travels by other means)
#   --wheels-from DIR       take the wheels from DIR instead of downloading them
#   --ort-gpu VERSION       also download onnxruntime-gpu==VERSION, split into parts of --split-size in
#                           --parts-dir (default DIR.ort-gpu), to travel apart; copy the parts into the
#                           bundle's wheels/ on the target and --offline joins them before installing
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=artifacts/bench/cuda
PY=""
DATA=""
QUICK=0
DRY=0
OFFLINE=0
FROM=""
BUDGET=480
BUNDLE=""
HAVE=benchmarks/gpu-machine-packages.txt
PYVER=3.12
WITHOUT_PROJECT=0
WHEELS_FROM=""
MAX_SIZE=64M
ORT_GPU=""
SPLIT_SIZE=60M
PARTS_DIR=""
usage() { sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
need() { [ -n "${2:-}" ] || { echo "cuda.sh: $1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
    case "$1" in
        --output | --out) need "$1" "${2:-}"; OUT="$2"; shift 2 ;;
        --python) need "$1" "${2:-}"; PY="$2"; shift 2 ;;
        --data-dir) need "$1" "${2:-}"; DATA="$2"; shift 2 ;;
        --from) need "$1" "${2:-}"; FROM="$2"; shift 2 ;;
        --budget) need "$1" "${2:-}"; BUDGET="$2"; shift 2 ;;
        --bundle) need "$1" "${2:-}"; BUNDLE="$2"; shift 2 ;;
        --target-packages) need "$1" "${2:-}"; HAVE="$2"; shift 2 ;;
        --python-version) need "$1" "${2:-}"; PYVER="$2"; shift 2 ;;
        --wheels-from) need "$1" "${2:-}"; WHEELS_FROM="$2"; shift 2 ;;
        --max-size) need "$1" "${2:-}"; MAX_SIZE="$2"; shift 2 ;;
        --ort-gpu) need "$1" "${2:-}"; ORT_GPU="$2"; shift 2 ;;
        --split-size) need "$1" "${2:-}"; SPLIT_SIZE="$2"; shift 2 ;;
        --parts-dir) need "$1" "${2:-}"; PARTS_DIR="$2"; shift 2 ;;
        --without-project) WITHOUT_PROJECT=1; shift ;;
        --offline) OFFLINE=1; shift ;;
        --quick) QUICK=1; shift ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage ;;
        *) echo "cuda.sh: unknown argument $1" >&2; usage ;;
    esac
done
case "$BUDGET" in ''|*[!0-9]*) echo "cuda.sh: --budget $BUDGET: expected whole seconds" >&2; exit 2 ;; esac

step=0
show() {  # one numbered line per step, on stderr, whether it runs or not
    step=$((step + 1))
    echo "[$step] $*" >&2
}

# ---------------------------------------------------------------------------------------------
# The bundle: built where the network is, for a machine where it is not.
if [ -n "$BUNDLE" ]; then
    DATA_SRC="${DATA:-/usr/share/datasets/fashion-mnist}"
    DL=(python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp)
    for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
        manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
        DL+=(--platform "$p")
    done
    if [ ! -f "$HAVE" ]; then echo "cuda.sh: --target-packages $HAVE: no such file" >&2; exit 2; fi
    if ! wanted="$(python3 benchmarks/bundle.py missing --have "$HAVE")"; then exit 1; fi
    bdo() { show "$@"; if [ "$DRY" = 0 ]; then "$@" || { echo "cuda.sh: bundle step failed: $*" >&2; exit 1; }; fi; }
    bdo mkdir -p "$BUNDLE/data" "$BUNDLE/wheels"
    if [ "$WITHOUT_PROJECT" = 0 ]; then
        show "copy the project's files (git ls-files, as they are in the working tree) to $BUNDLE/project"
        if [ "$DRY" = 0 ]; then
            mkdir -p "$BUNDLE/project"
            git ls-files -z --cached --others --exclude-standard \
                | python3 -c 'import os, sys; sys.stdout.write("".join(p + "\0" for p in sys.stdin.read().split("\0") if p and os.path.isfile(p)))' \
                | tar --null -T - -cf - | tar -xf - -C "$BUNDLE/project" || { echo "cuda.sh: copying the project failed" >&2; exit 1; }
        fi
    fi
    for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
        if [ "$DRY" = 0 ] && [ ! -f "$DATA_SRC/$f.gz" ]; then
            echo "cuda.sh: $DATA_SRC/$f.gz: no such file (--data-dir names the folder with the four .gz files)" >&2
            exit 1
        fi
        bdo cp "$DATA_SRC/$f.gz" "$BUNDLE/data/"
    done
    echo "wheels the target lacks (from $HAVE): ${wanted:-none}" >&2
    while IFS= read -r req; do
        [ -n "$req" ] || continue
        if [ -n "$WHEELS_FROM" ]; then
            name="$(echo "$req" | sed 's/[<>=!~;[ ].*//' | tr '[:upper:]-' '[:lower:]_')"
            show cp "$WHEELS_FROM/${name}-*.whl" "$BUNDLE/wheels/"
            if [ "$DRY" = 0 ]; then
                found=("$WHEELS_FROM"/"${name}"-*.whl)
                [ -f "${found[0]}" ] || { echo "cuda.sh: no ${name} wheel in $WHEELS_FROM" >&2; exit 1; }
                cp "${found[@]}" "$BUNDLE/wheels/"
            fi
        else
            bdo "${DL[@]}" -d "$BUNDLE/wheels" "$req"
        fi
    done <<<"$wanted"
    if [ -n "$ORT_GPU" ]; then
        PARTS_DIR="${PARTS_DIR:-${BUNDLE%/}.ort-gpu}"
        bdo "${DL[@]}" -d "$PARTS_DIR/whole" "onnxruntime-gpu==$ORT_GPU"
        show python3 benchmarks/bundle.py split "$PARTS_DIR/whole/onnxruntime_gpu-$ORT_GPU-*.whl" --size "$SPLIT_SIZE" --output "$PARTS_DIR"
        if [ "$DRY" = 0 ]; then
            for whl in "$PARTS_DIR"/whole/onnxruntime_gpu-*.whl; do
                python3 benchmarks/bundle.py split "$whl" --size "$SPLIT_SIZE" --output "$PARTS_DIR" || exit 1
            done
            rm -rf "$PARTS_DIR/whole"
        fi
    fi
    show "write $BUNDLE/README.txt (how to run it) and $BUNDLE/SHA256SUMS"
    if [ "$DRY" = 0 ]; then
        cat >"$BUNDLE/README.txt" <<EOF
fmnist-deploy CUDA bundle: the project, the Fashion-MNIST gz files and the wheels a
Python $PYVER interpreter with torch lacks (from $(basename "$HAVE")), for a machine without network.

On the GPU machine (about 8 minutes; every report into one folder and one .tar.gz):

    cd project && benchmarks/cuda.sh --python python3 --offline --output ../reports

(With --without-project, run the same from the project's own tree with --from THIS_FOLDER.)
onnxruntime-gpu travels apart, split: copy its parts into wheels/ and the run joins them.
See 'benchmarks/cuda.sh --help'. Nothing is installed from the network.
EOF
        (cd "$BUNDLE" && find data wheels -type f ! -name SHA256SUMS -print0 | sort -z | xargs -0 -r sha256sum >SHA256SUMS)
    fi
    show python3 benchmarks/bundle.py size "$BUNDLE" --max "$MAX_SIZE"
    if [ "$DRY" = 0 ]; then
        python3 benchmarks/bundle.py size "$BUNDLE" --max "$MAX_SIZE" || exit 1
        echo "bundle written to $BUNDLE" >&2
    else
        echo "dry run: nothing was written" >&2
    fi
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# The run.
if [ "$OFFLINE" = 1 ] && [ -z "$PY" ]; then
    echo "cuda.sh: --offline needs --python PY (the GPU machine's interpreter with torch)" >&2
    exit 2
fi
if [ "$OFFLINE" = 1 ] && [ -z "$FROM" ]; then
    if [ -d ../data ] || [ -d ../wheels ]; then FROM=..; else
        echo "cuda.sh: --offline: no bundle above this project (../data, ../wheels); name it with --from DIR" >&2
        exit 2
    fi
fi
[ "$OFFLINE" = 1 ] && [ -z "$DATA" ] && DATA="$FROM/data"

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

if [ "$DRY" = 0 ]; then
    mkdir -p "$OUT/logs" || exit 1
    OUT="$(cd "$OUT" && pwd)"
    printf 'step\tname\tstatus\tseconds\ttimeout_s\n' >"$OUT/steps.tsv"
fi
START=$SECONDS
FAILED=0
# run NAME TIMEOUT CMD...: one step, bounded by its timeout and by what is left of --budget, its output
# in OUT/logs/NN-NAME.log and its outcome in OUT/steps.tsv; a failure is recorded, and the run goes on.
run() {
    local name="$1" limit="$2"
    shift 2
    show "$* (timeout ${limit} s, log logs/$(printf %02d $((step + 1)))-$name.log)"
    [ "$DRY" = 1 ] && return 0
    local left=$((BUDGET - (SECONDS - START)))
    [ "$left" -lt "$limit" ] && limit=$left
    local log
    log="$OUT/logs/$(printf %02d "$step")-$name.log"
    if [ "$limit" -lt 5 ]; then
        echo "not run: the --budget of ${BUDGET} s is spent" >"$log"
        printf '%s\t%s\t%s\t%s\t%s\n' "$step" "$name" "not run (budget spent)" 0 0 >>"$OUT/steps.tsv"
        FAILED=$((FAILED + 1))
        return 1
    fi
    local t0=$SECONDS rc=0
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1 || rc=$?
    local status="ok"
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="timed out"; elif [ "$rc" != 0 ]; then status="failed ($rc)"; fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$step" "$name" "$status" $((SECONDS - t0)) "$limit" >>"$OUT/steps.tsv"
    echo "    $status in $((SECONDS - t0)) s" >&2
    [ "$status" = ok ] || FAILED=$((FAILED + 1))
    [ "$status" = ok ]
}

data_args=()
[ -n "$DATA" ] && data_args=(--data-dir "$DATA")
if [ "$OFFLINE" = 1 ]; then
    VENV="${TMPDIR:-/tmp}/fmnist-cuda-venv"
    run join-wheels 60 "$PY" benchmarks/bundle.py join "$FROM/wheels"
    # A virtual environment over PY's own packages (torch with CUDA), so the bundle's wheels and the
    # project go beside them, not into them; its site-packages come first, so onnxruntime-gpu, when
    # brought, is the onnxruntime imported.
    run venv 60 "$PY" benchmarks/bundle.py venv "$VENV"
    run install-wheels 120 "$VENV/bin/python" benchmarks/bundle.py install "$FROM/wheels" --python "$VENV/bin/python"
    run install-project 120 "$VENV/bin/python" -m pip install --no-index --no-deps --no-build-isolation --no-cache-dir -e .
    PYX="$VENV/bin/python"
elif [ -n "$PY" ]; then
    run install-project 300 "$PY" -m pip install --quiet --no-deps --no-build-isolation -e .
    PYX="$PY"
else
    run setup 900 make setup data
    PYX=.venv/bin/python
    # ONNX Runtime's CUDA provider comes in its own package (the same module name): swap it in.
    ORT_VERSION="$("$PYX" -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null || echo missing)"
    run ort-gpu 300 bash -c "'$PYX' -m pip uninstall --quiet --yes onnxruntime && '$PYX' -m pip install --quiet --no-deps onnxruntime-gpu==${ORT_VERSION}"
fi
run data 120 "$PYX" -m fmnist_deploy.training.data "${data_args[@]}"
run environment 60 "$PYX" -m fmnist_deploy.benchmarks.cuda_summary --environment "$OUT"

# The committed TorchScript / .pt2 files must load in this torch; those that do not are re-exported here.
ARTS=artifacts
run reexport 180 "$PYX" -m fmnist_deploy.benchmarks.reexport --artifacts artifacts --output "$OUT/models" "${data_args[@]}"
[ "$DRY" = 0 ] && [ -f "$OUT/models/reexport.json" ] && ARTS="$OUT/models"

# The CUDA tests; a skip means something the GPU run should have checked was not: it fails the run
# (one for a package that is not installed, such as onnxruntime-gpu, is listed instead).
run cuda-tests 150 "$PYX" -m pytest -q -p no:cacheprovider -m cuda -rs --junitxml "$OUT/cuda-tests.xml" tests
run cuda-tests-verdict 30 "$PYX" -m fmnist_deploy.benchmarks.junit "$OUT/cuda-tests.xml"

bench=("$PYX" -m fmnist_deploy.benchmarks.cli)
# torch.compile recompiles per batch size and aoti builds for a minute: the GPU grid leaves them out.
backends=(--backend onnxruntime --backend ort-session --backend torchscript --backend pt2 --backend eager --backend numpy)
if [ "$QUICK" = 1 ]; then
    grid=(--sizes 1,100,1000,10000 --seconds 0.2 --ceiling-rounds 0)
else
    grid=(--sizes 1,8,32,100,1000,10000,100000 --seconds 0.25 --ceiling-rounds 2 --e2e-max-batch 100)
fi
run latency 200 "${bench[@]}" latency --artifacts "$ARTS" --device cpu --device cuda "${backends[@]}" "${grid[@]}" "${data_args[@]}" --output "$OUT"
run parity 90 "${bench[@]}" parity --artifacts "$ARTS" --device cpu --device cuda "${data_args[@]}" --output "$OUT"
run train-speed 90 "${bench[@]}" train --device cuda "${data_args[@]}" --output "$OUT"
# The course recipe, 100 epochs, with the GPU-resident data set and the CUDA-graphed step: the step's
# seconds (steps.tsv) and the history's per-epoch seconds are the numbers.
run train-100-epochs 120 "$PYX" -m fmnist_deploy.training.cli --device cuda --epochs 100 --output "$OUT/train" "${data_args[@]}"
run summary 30 "$PYX" -m fmnist_deploy.benchmarks.cuda_summary "$OUT"

if [ "$DRY" = 1 ]; then
    show "tar czf $OUT.tar.gz (every report, log and the summary, in one archive)"
    echo "dry run: nothing was run${gpu:+; this machine has $gpu}" >&2
    exit 0
fi
rm -rf "$OUT/train/checkpoint.pt"  # 1 MB of optimizer state; the weights, history and plots stay
tar czf "$OUT.tar.gz" -C "$(dirname "$OUT")" "$(basename "$OUT")"
echo "reports in $OUT and $OUT.tar.gz ($FAILED step(s) not ok; see $OUT/steps.tsv and $OUT/summary.md):" >&2
cat "$OUT/steps.tsv" >&2
[ "$FAILED" = 0 ]
