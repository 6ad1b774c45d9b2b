#!/usr/bin/env bash
# Tokens/s and MFU of CART d=1024 and its dense baseline on a CUDA machine, bf16 + torch.compile,
# in about 5 minutes. Usage: bash bench/gpu.sh  (from the repository root, with cartspec installed)
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 300 python bench/gpu_mfu.py specs/cart_d1024.yaml specs/dense_d1024.yaml --steps 20
