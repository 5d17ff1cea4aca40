#!/usr/bin/env bash
# Here, before a GPU session: the wheels benchmarks/gpu_check.sh installs on the GPU machine (Python 3.12; its
# image already holds torch, Lightning, timm, torchmetrics, OpenCV, pandas, scipy, PyYAML). Into .whl/, which
# .git/info/exclude keeps out of git; the device call names it in `carry` (about 10 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    segmentation-models-pytorch==0.6.0 hydra-core==1.3.8 omegaconf==2.3.1 \
    albumentations==2.0.8 albucore==0.0.24 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 \
    typing-inspection==0.4.2 stringzilla==5.3.2 simsimd==6.5.16 pycocotools==2.0.11
# hydra-core's parser runtime is published as a source archive only: build its (pure-Python) wheel here
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls .whl
