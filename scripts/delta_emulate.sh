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
CUDA_LIB=${CUDA_LIB:-/usr/local/cuda/lib}
BUILD=${BUILD:-build-delta}
mkdir -p build-emu-delta
g++ -std=c++20 -O1 -g -Wall -Wno-attributes -Wno-unknown-pragmas -Wno-unused-function -Wno-class-memaccess $SANFLAGS $DEFS \
  -I. -isystem "$CUDA_INC" -c scripts/delta_emulate.cc -o build-emu-delta/delta_emulate.o
g++ -std=c++20 -O2 -fopenmp -DSEQMIX_WITH_CUDA=1 -DFMT_SHARED -DSPDLOG_COMPILED_LIB -DSPDLOG_FMT_EXTERNAL -DSPDLOG_SHARED_LIB \
  -I. -isystem "$CUDA_INC" -c scripts/delta_emulate_ref.cpp -o build-emu-delta/delta_emulate_ref.o
g++ $SANFLAGS -fopenmp build-emu-delta/delta_emulate.o build-emu-delta/delta_emulate_ref.o -o build-emu-delta/delta_emulate \
  -Wl,-rpath,"$CUDA_LIB" "$BUILD"/libseqmix_nn.a "$BUILD"/libseqmix_data.a "$BUILD"/libseqmix_core.a -lopenblas \
  "$CUDA_LIB"/libcudart.so "$CUDA_LIB"/libcublas.so "$CUDA_LIB"/libcublasLt.so "$CUDA_LIB"/libcufft.so -lyaml-cpp -lspdlog -lfmt \
  $( [[ -e "$CUDA_LIB"/libnccl.so ]] && echo "$CUDA_LIB"/libnccl.so ) -lpthread -ldl -lrt
build-emu-delta/delta_emulate "$@"
