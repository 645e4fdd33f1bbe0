#!/usr/bin/env bash
# Builds what tools/gpu/run_device.sh needs on a GPU machine that has no Rust toolchain and no
# network, into .gpu/ (ignored by git):
#   .gpu/sknet-cpu      the default build (flex CPU backend), the parity reference
#   .gpu/sknet-vulkan   the same code built with --features vulkan
#   .gpu/debs/*.deb     the Vulkan loader, unpacked on the GPU machine if it has none
# Run from the repository root; a cold Vulkan release build takes about 18 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/debs
cargo build --release --locked
cargo build --release --locked --features vulkan --target-dir target/vulkan
cp target/release/sknet .gpu/sknet-cpu
cp target/vulkan/release/sknet .gpu/sknet-vulkan
strip .gpu/sknet-cpu .gpu/sknet-vulkan
lists=/tmp/sknet-apt-amd64
mkdir -p "$lists/partial"
opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists="$lists")
apt-get "${opts[@]}" update -qq
(cd .gpu/debs && apt-get "${opts[@]}" download libvulkan1)
du -sh .gpu
