#!/usr/bin/env bash
# Builds and runs the CPU emulation of the tensor-core linear-recurrence kernels (scripts/lr_tc_emulate.cc):
# every kernel body compiled for the host, one thread per block, against a double-precision reference.
#   scripts/lr_tc_emulate.sh [--quick]        (SAN=0 builds without AddressSanitizer / UBSan: faster)
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_INC=${CUDA_INC:-/usr/local/cuda/include}
SANFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
[[ "${SAN:-1}" == 0 ]] && SANFLAGS=""
mkdir -p build-emu
g++ -std=c++20 -O1 -g -fno-strict-aliasing -Wall -Wno-attributes -Wno-unknown-pragmas -Wno-unused-function $SANFLAGS \
  -I. -isystem "$CUDA_INC" scripts/lr_tc_emulate.cc -o build-emu/lr_tc_emulate
build-emu/lr_tc_emulate "$@"
