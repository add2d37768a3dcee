#!/usr/bin/env bash
# Builds and runs the CPU emulation of the tensor-core linear-recurrence kernels (scripts/lr_tc_emulate.cc):
# every kernel body compiled for the host, against a double-precision reference.
#   scripts/lr_tc_emulate.sh [--quick | --gpu-cases]   one thread per block, AddressSanitizer + UBSan
#   SAN=0 scripts/lr_tc_emulate.sh ...                  the same without sanitizers (seconds)
#   THREADS=1 scripts/lr_tc_emulate.sh --threads-cases  real block sizes, one std::thread per CUDA thread,
#                                                       std::barriers for the syncs (built with ThreadSanitizer,
#                                                       which did NOT flag a seeded shared-memory race here: a
#                                                       missing barrier shows as wrong results, not as a report)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/emulate/flags.sh
mkdir -p build-emu
g++ -std=c++20 -O1 -g -fno-strict-aliasing -Wall -Wno-attributes -Wno-unknown-pragmas -Wno-unused-function \
  -Wno-class-memaccess $SANFLAGS $DEFS -I. -isystem "$CUDA_INC" scripts/lr_tc_emulate.cc -o build-emu/lr_tc_emulate -pthread
build-emu/lr_tc_emulate "$@"
