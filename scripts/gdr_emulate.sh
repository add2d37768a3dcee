#!/usr/bin/env bash
# Builds and runs the CPU emulation of the fused recurrent generalized-delta-rule kernels (scripts/gdr_emulate.cc):
# the kernel bodies compiled for the host with one std::thread per CUDA thread (their warp shuffles need the
# other lanes running), against an f64 recurrence; gradients by directional derivatives.
#   scripts/gdr_emulate.sh [--quick]         AddressSanitizer + UBSan
#   SAN=0 scripts/gdr_emulate.sh ...         the same without sanitizers
#   SAN=tsan scripts/gdr_emulate.sh --quick  under ThreadSanitizer
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_INC=${CUDA_INC:-/usr/local/cuda/include}
case "${SAN:-1}" in
  0) SANFLAGS="" ;;
  tsan) SANFLAGS="-fsanitize=thread" ;;
  *) SANFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined" ;;
esac
mkdir -p build-emu-gdr
g++ -std=c++20 -O1 -g -Wall -Wno-attributes -Wno-unknown-pragmas -Wno-unused-function $SANFLAGS -DSEQMIX_EMU_THREADS=1 \
  -I. -isystem "$CUDA_INC" scripts/gdr_emulate.cc -o build-emu-gdr/gdr_emulate -lpthread
build-emu-gdr/gdr_emulate "$@"
