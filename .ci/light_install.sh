#!/usr/bin/env bash
# The light install (no extras: no torch) in a fresh venv runs `roiseg predict` and `roiseg evaluate` on the
# fused models the test suite wrote to $1/models (ROISEG_MODEL_EXPORT). Usage: .ci/light_install.sh DIR
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1
shared=${ROISEG_SHARED:-../shared}
uv venv -q "$dir/venv"
# the locked versions of the base dependencies (no dev group, no extras), bytecode compiled as pip does
uv export --frozen --no-dev --no-emit-project --no-hashes --quiet -o "$dir/constraints.txt"
uv pip install -q --python "$dir/venv/bin/python" --compile-bytecode -c "$dir/constraints.txt" .
py="$dir/venv/bin/python"
if "$py" -c "import torch" 2>/dev/null; then echo "the light install has torch" >&2; exit 1; fi
image="$shared/coco-tiny/images/val2017/000000005001.jpg"
"$dir/venv/bin/roiseg" predict --model "$dir/models/roi_model.onnx" --image "$image" --roi 20,30,200,300 \
  --out "$dir/roi.png" --device cpu
"$dir/venv/bin/roiseg" predict --model "$dir/models/instance_model.onnx" --image "$image" --out "$dir/persons.png" \
  --device cpu
"$dir/venv/bin/roiseg" evaluate --model "$dir/models/instance_model.onnx" --device cpu --max-images 3 \
  --annotations "$shared/coco-tiny/annotations/instances_val2017.json" --images "$shared/coco-tiny/images/val2017"
echo "light install: predict and evaluate ran without torch"
