#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, with .gpu/ made by tools/gpu/prepare.sh:
#   bash tools/gpu/run_device.sh [OUT_DIR]
# Checks the GPU builds (wgpu, vulkan) against the CPU build and against timm on the GPU, then times
# inference and a training step against PyTorch (CUDA) on the same GPU. Results go to OUT_DIR
# (default: $OUT, else ./gpu-results) as gpu_results.json and gpu_results.md.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${1:-${OUT:-gpu-results}}"
mkdir -p "$out"
if ! ldconfig -p | grep -q libvulkan.so.1; then
    for f in .gpu/debs/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
# The NVIDIA driver's Vulkan ICD, where the container mounts it.
for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json \
           /etc/vulkan/icd.d/nvidia_icd.json; do
    if [ -f "$icd" ]; then export VK_DRIVER_FILES="$icd"; break; fi
done
echo "Vulkan ICD: ${VK_DRIVER_FILES:-none found}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
export PYTHONUNBUFFERED=1
timeout 450 python3 tools/gpu/device_check.py --cpu-bin .gpu/sknet-cpu --gpu-bin .gpu/sknet-wgpu --gpu-bin .gpu/sknet-vulkan \
    --out "$out" 2>&1 | tee "$out/log.txt"
