#!/usr/bin/env bash
# The CUDA tests as the GPU machine's own interpreter sees them: a virtual environment holding only
# the packages that machine has (numpy, onnx, onnxruntime, pillow, click, matplotlib, pytest,
# hypothesis, prometheus-client, setuptools, wheel, and torch + torchvision taken from a base interpreter), none of the
# optional ones (imagecodecs, starlette, uvicorn, fastapi, tritonclient, ray, openvino). Collecting
# and running `pytest -m cuda` there must end in passes or skips that say why, never in an error.
#
#   benchmarks/gpu_packages.sh [--venv DIR] [--torch-from PY] [-- PYTEST-ARGS...]
#
#   --venv DIR        where the environment is built (default: a temporary folder, removed after)
#   --torch-from PY   the interpreter whose torch and torchvision are reused (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=""
BASE=.venv/bin/python
while [ $# -gt 0 ]; do
    case "$1" in
        --venv) VENV="${2:?--venv needs a folder}"; shift 2 ;;
        --torch-from) BASE="${2:?--torch-from needs an interpreter}"; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
        *) echo "gpu_packages.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
KEEP=1
if [ -z "$VENV" ]; then
    VENV="$(mktemp -d)/gpu-venv"
    KEEP=0
fi
cleanup() { [ "$KEEP" = 1 ] || rm -rf "$(dirname "$VENV")"; }
trap cleanup EXIT

# The packages the GPU machine's image has (of those the project uses), by distribution name.
GPU_PACKAGES=(numpy onnx onnxruntime pillow click matplotlib pytest hypothesis prometheus-client setuptools wheel)
# torch and what it imports, reused from the base interpreter's site-packages by a folder of links.
TORCH_TOPS=(torch torchgen functorch torchvision torchvision.libs triton nvidia cuda sympy mpmath networkx
    jinja2 markupsafe fsspec filelock typing_extensions.py)

python3 -m venv "$VENV"
site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
base_site="$("$BASE" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')"
links="$VENV/torch-from-base"
mkdir -p "$links"
for top in "${TORCH_TOPS[@]}"; do
    if [ -e "$base_site/$top" ]; then ln -s "$base_site/$top" "$links/$top"; fi
done
for info in "$base_site"/{torch,torchvision,triton,sympy,mpmath,networkx,jinja2,markupsafe,fsspec,filelock,typing_extensions,nvidia_*,cuda_*}-*.dist-info; do
    [ -e "$info" ] && ln -s "$info" "$links/$(basename "$info")"
done
echo "$links" >"$site/torch-from-base.pth"
"$VENV/bin/python" -m pip install --quiet "${GPU_PACKAGES[@]}"
"$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .

echo "packages in $VENV:" >&2
"$VENV/bin/python" -m pip list --format freeze 2>/dev/null | tr '\n' ' ' >&2
echo >&2
for absent in imagecodecs starlette uvicorn fastapi tritonclient ray openvino httpx; do
    if "$VENV/bin/python" -c "import $absent" 2>/dev/null; then
        echo "gpu_packages.sh: $absent is importable in $VENV; the check needs it absent" >&2
        exit 1
    fi
done
# -m cuda: the tests a GPU run makes; without a GPU every one of them must skip and say why.
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -m cuda -rs tests "$@"
