#!/usr/bin/env bash
# Builds and runs the CPU emulation of the fused chunked delta-rule kernels (scripts/delta_emulate.cc): every
# kernel body compiled for the host, one thread per block, against delta_rule_reference in f64.
#   scripts/delta_emulate.sh [--all | --quick | --d128 | --prec | --extreme]   AddressSanitizer + UBSan
#   SAN=0 scripts/delta_emulate.sh ...                                          the same without sanitizers
#   THREADS=1 scripts/delta_emulate.sh --threads-cases   real block size (256), one std::thread per CUDA thread,
#                                                        barriers for the syncs, under ThreadSanitizer
#   THREADS=1 scripts/delta_emulate.sh --threads-wide    the same at D = 128 (and Dk 64, Dv 128), every input type:
#                                                        the register paths that need 32 lanes per warp
# Needs the seqmix libraries of a build dir (BUILD, default build-delta: ninja -C build-delta seqmix_nn) for the
# reference (scripts/delta_emulate_ref.cpp).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/emulate/flags.sh
emu_build_with_ref delta
build-emu-delta/delta_emulate "$@"
