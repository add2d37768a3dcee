# Sourced by the emulation scripts (scripts/lr_tc_emulate.sh, delta_emulate.sh, dplr_emulate.sh): CUDA_INC, and SANFLAGS /
# DEFS from SAN (default 1: AddressSanitizer + UBSan; 0: none) and THREADS (1: ThreadSanitizer and one
# std::thread per CUDA thread, SEQMIX_EMU_THREADS=1 in scripts/emulate/cuda_host.h).
CUDA_INC=${CUDA_INC:-/usr/local/cuda/include}
SANFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
DEFS=""
[[ "${SAN:-1}" == 0 ]] && SANFLAGS=""
if [[ "${THREADS:-0}" == 1 ]]; then
  SANFLAGS="-fsanitize=thread"
  DEFS="-DSEQMIX_EMU_THREADS=1"
fi

# emu_build_with_ref NAME: builds build-emu-NAME/NAME_emulate from scripts/NAME_emulate.cc (the kernel bodies, with
# SANFLAGS / DEFS) and its f64 oracle scripts/NAME_emulate_ref.cpp, linked against the seqmix libraries of BUILD
# (default build-delta); CUDA_LIB (default /usr/local/cuda/lib) for the libraries they pull in.
emu_build_with_ref() {
  local name=$1 dir=build-emu-$1 lib=${CUDA_LIB:-/usr/local/cuda/lib} build=${BUILD:-build-delta}
  mkdir -p "$dir"
  g++ -std=c++20 -O1 -g -Wall -Wno-attributes -Wno-unknown-pragmas -Wno-unused-function -Wno-class-memaccess $SANFLAGS $DEFS \
    -I. -isystem "$CUDA_INC" -c "scripts/${name}_emulate.cc" -o "$dir/${name}_emulate.o"
  g++ -std=c++20 -O2 -fopenmp -DSEQMIX_WITH_CUDA=1 -DFMT_SHARED -DSPDLOG_COMPILED_LIB -DSPDLOG_FMT_EXTERNAL -DSPDLOG_SHARED_LIB \
    -I. -isystem "$CUDA_INC" -c "scripts/${name}_emulate_ref.cpp" -o "$dir/${name}_emulate_ref.o"
  g++ $SANFLAGS -fopenmp "$dir/${name}_emulate.o" "$dir/${name}_emulate_ref.o" -o "$dir/${name}_emulate" \
    -Wl,-rpath,"$lib" "$build"/libseqmix_nn.a "$build"/libseqmix_data.a "$build"/libseqmix_core.a -lopenblas \
    "$lib"/libcudart.so "$lib"/libcublas.so "$lib"/libcublasLt.so "$lib"/libcufft.so -lyaml-cpp -lspdlog -lfmt \
    $( [[ -e "$lib"/libnccl.so ]] && echo "$lib"/libnccl.so ) -lpthread -ldl -lrt
}
