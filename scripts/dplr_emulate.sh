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
CUDA_LIB=${CUDA_LIB:-/usr/local/cuda/lib}
BUILD=${BUILD:-build-delta}
mkdir -p build-emu-dplr
g++ -std=c++20 -O1 -g -Wall -Wno-attributes -Wno-unknown-pragmas -Wno-unused-function -Wno-class-memaccess $SANFLAGS $DEFS \
  -I. -isystem "$CUDA_INC" -c scripts/dplr_emulate.cc -o build-emu-dplr/dplr_emulate.o
g++ -std=c++20 -O2 -fopenmp -DSEQMIX_WITH_CUDA=1 -DFMT_SHARED -DSPDLOG_COMPILED_LIB -DSPDLOG_FMT_EXTERNAL -DSPDLOG_SHARED_LIB \
  -I. -isystem "$CUDA_INC" -c scripts/dplr_emulate_ref.cpp -o build-emu-dplr/dplr_emulate_ref.o
g++ $SANFLAGS -fopenmp build-emu-dplr/dplr_emulate.o build-emu-dplr/dplr_emulate_ref.o -o build-emu-dplr/dplr_emulate \
  -Wl,-rpath,"$CUDA_LIB" "$BUILD"/libseqmix_nn.a "$BUILD"/libseqmix_data.a "$BUILD"/libseqmix_core.a -lopenblas \
  "$CUDA_LIB"/libcudart.so "$CUDA_LIB"/libcublas.so "$CUDA_LIB"/libcublasLt.so "$CUDA_LIB"/libcufft.so -lyaml-cpp -lspdlog -lfmt \
  $( [[ -e "$CUDA_LIB"/libnccl.so ]] && echo "$CUDA_LIB"/libnccl.so ) -lpthread -ldl -lrt
build-emu-dplr/dplr_emulate "$@"
