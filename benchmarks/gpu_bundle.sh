#!/usr/bin/env bash
# Build .gpu_bundle/ (git-ignored): what a bare GPU machine with Python 3.12 and torch, but without
# anndata and ray, needs to run benchmarks/bench_gpu_standard.py, small enough to travel with the
# working tree (a lent device machine takes 64 MiB in all):
#   wheels/      anndata and the libraries it needs; jsonschema and those it needs (ray's one missing
#                requirement there); cp312 manylinux x86_64 wheels, pinned to requirements.txt's versions
#   ray.tar.xz   ray 2.60.0 (cp312), unpacked, without what `ray.init` + tasks never import (Java jars,
#                rllib, data, serve, train, tune, llm, the dashboard's web client): ~20 MB instead of 79
# Usage: bash benchmarks/gpu_bundle.sh   (here, with network), then on the GPU machine, in the repo root:
#   mkdir -p /tmp/site && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
#     .gpu_bundle/wheels/*.whl && tar -xJf .gpu_bundle/ray.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
grep -qxF '/.gpu_bundle/' .git/info/exclude 2>/dev/null || echo '/.gpu_bundle/' >> .git/info/exclude
B=.gpu_bundle
rm -rf "$B" && mkdir -p "$B/wheels"
plat=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$PY" -m pip download -q "${plat[@]}" -d "$B/wheels" \
  anndata==0.12.19 array-api-compat==1.16.0 legacy-api-wrap==1.5 natsort==8.4.0 zarr==3.1.6 \
  numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 session-info2==0.4.1 scverse-misc==0.0.3 \
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q "${plat[@]}" -d "$tmp" ray==2.60.0
(cd "$tmp" && unzip -q ray-2.60.0-*.whl 'ray/*' 'ray-2.60.0.dist-info/*' \
   -x 'ray/jars/*' 'ray/rllib/*' 'ray/data/*' 'ray/serve/*' 'ray/train/*' 'ray/tune/*' 'ray/llm/*' \
      'ray/dashboard/client/build/*')
tar -C "$tmp" -c ray ray-2.60.0.dist-info | xz -T0 -9 > "$B/ray.tar.xz"
du -sh "$B"/wheels "$B"/ray.tar.xz
