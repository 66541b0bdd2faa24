#!/usr/bin/env bash
# Create the environment of the benchmarks' references (torch CPU + torchvision): Meta's
# segment-anything, and MobileSAM's code for vit_t (mobilesam-mirror, which imports timm).
# Usage: bash benchmarks/setup_reference_env.sh [DIR]   (default: .venv-ref)
set -euo pipefail
dir=${1:-.venv-ref}
python3 -m venv "$dir"
"$dir/bin/python" -m pip install -q -U pip
"$dir/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" \
  "segment-anything==1.0" "timm==1.0.31" "mobilesam-mirror==1.0.0" "numpy<2" \
  opencv-python-headless pycocotools
echo "reference python: $dir/bin/python"
