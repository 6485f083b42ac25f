#!/usr/bin/env bash
# Installs nvcc and the CUDA headers from the Python package registry (no system CUDA, no GPU
# needed) into a local folder, and prints the environment candle's CUDA build needs.
#
#   eval "$(scripts/cuda-toolchain.sh)"        # then: cargo check -p alp-model --features cuda
#
# Folder: $ALP_CUDA_DIR (default: .cuda-toolchain in the repository). CUDA 13.0, matching the
# 580-series drivers of the GPU machines here. Linking a binary (not `cargo check`) further needs
# libcuda (the driver), libnvrtc, libcurand, libcublas, libcublasLt and an unversioned
# libcudart.so; see README.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${ALP_CUDA_DIR:-$root/.cuda-toolchain}"
cuda="$dir/nvidia/cu13"
pkgs=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
)
if [ ! -x "$cuda/bin/nvcc" ]; then
    mkdir -p "$dir/wheels"
    py=$(command -v python3 || command -v python)
    "$py" -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --python-version 3.12 -d "$dir/wheels" "${pkgs[@]}" >&2
    for w in "$dir"/wheels/*.whl; do
        "$py" -m zipfile -e "$w" "$dir" >&2
    done
    chmod +x "$cuda"/bin/* "$cuda"/nvvm/bin/* 2>/dev/null || true
    # nvcc looks for nvvm and the crt headers next to itself.
    [ -e "$cuda/lib64" ] || ln -s lib "$cuda/lib64"
fi
[ -x "$cuda/bin/nvcc" ] || { echo "nvcc was not unpacked to $cuda/bin" >&2; exit 1; }
echo "export CUDA_ROOT='$cuda'"
echo "export CUDA_PATH='$cuda'"
echo "export PATH='$cuda/bin':\"\$PATH\""
echo "export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}"
echo "export LD_LIBRARY_PATH='$cuda/lib':\"\${LD_LIBRARY_PATH:-}\""
# candle-kernels builds its kernels through cudaforge, which runs nvcc on half the cores unless
# told otherwise: on 2 cores that is one at a time (a clean CUDA check took 14 min that way).
echo "export CUDAFORGE_THREADS=\${CUDAFORGE_THREADS:-$(nproc 2>/dev/null || echo 2)}"
