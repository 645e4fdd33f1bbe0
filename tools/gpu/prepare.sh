#!/usr/bin/env bash
# Builds what tools/gpu/run_device.sh needs on a GPU machine that has no Rust toolchain and no
# network, into .gpu/ (ignored by git):
#   .gpu/sknet-cpu      the default build (flex CPU backend), the parity reference
#   .gpu/sknet-wgpu     the same code built with --features wgpu (kernels through WGSL)
#   .gpu/sknet-vulkan   the same code built with --features vulkan (cubecl's SPIR-V compiler)
#   .gpu/debs/*.deb     the Vulkan loader, unpacked on the GPU machine if it has none
# Run from the repository root; the two cold GPU release builds take about 40 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/debs
cargo build --release --locked
cargo build --release --locked --features wgpu --target-dir target/vulkan
cp target/vulkan/release/sknet .gpu/sknet-wgpu
cargo build --release --locked --features vulkan --target-dir target/vulkan
cp target/vulkan/release/sknet .gpu/sknet-vulkan
cp target/release/sknet .gpu/sknet-cpu
strip .gpu/sknet-cpu .gpu/sknet-wgpu .gpu/sknet-vulkan
lists=/tmp/sknet-apt-amd64
mkdir -p "$lists/partial"
opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists="$lists")
apt-get "${opts[@]}" update -qq
(cd .gpu/debs && apt-get "${opts[@]}" download libvulkan1)
du -sh .gpu
