#!/usr/bin/env bash
# The GPU checks of issue 10 as one prepared run, for a session whose task is lent a device
# machine (it has PyTorch with CUDA, h5py, scikit-learn, click, tqdm, matplotlib, pytest):
#
#     bash benchmarks/device_check.sh          # from the repository root; about 8 minutes on an H100
#
# Writes $OUT/gpu.md (tables to append to benchmarks/RESULTS.md) and $OUT/log. Steps: the CUDA
# tests (the Lanczos basis on the device, the engine's options), the surface benchmark on the
# GPU (digits MLP and CNN, 21x21 and 51x51, 3 repeats; ResNet-style on 10,000 images, 1 repeat),
# and Hessian-vector products and Lanczos on the GPU against CPU float64 products.
set -uo pipefail
OUT=${OUT:-/tmp/lossvista-gpu}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
  python3 -m pytest -q -p no:cacheprovider tests/curvature/test_lanczos_memory.py \
    tests/test_input_layers.py tests/test_engine_speed.py
  python3 benchmarks/bench_surface.py --device cuda --models mlp,cnn --steps 21,51 --repeats 3 \
    --options --write "$OUT/gpu.md"
  python3 benchmarks/bench_surface.py --device cuda --models resnet --resnet-samples 10000 \
    --steps 21,51 --repeats 1 --options --write "$OUT/gpu.md"
  python3 benchmarks/bench_device_hvp.py --device cuda --images 2048 --write "$OUT/gpu.md"
} 2>&1 | tee "$OUT/log"
