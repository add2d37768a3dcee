#!/usr/bin/env bash
# Builds and runs the CPU emulation of the chunked generalized-delta-rule kernels (scripts/dplr_emulate.cc): every
# kernel body compiled for the host, one thread per block, against generalized_delta_rule_reference in f64.
#   scripts/dplr_emulate.sh [--all | --quick | --d128]   AddressSanitizer + UBSan
#   SAN=0 scripts/dplr_emulate.sh ...                   the same without sanitizers
#   THREADS=1 scripts/dplr_emulate.sh --threads-cases   real block size (256), one std::thread per CUDA thread,
#                                                       barriers for the syncs, under ThreadSanitizer
# Needs the seqmix libraries of a build dir (BUILD, default build-delta: ninja -C build-delta seqmix_nn) for the
# reference (scripts/dplr_emulate_ref.cpp).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/emulate/flags.sh
emu_build_with_ref dplr
build-emu-dplr/dplr_emulate "$@"
