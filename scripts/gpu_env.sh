# Sourced (from the repository root) by the scripts that run on the lent GPU machine: gpu_check.sh,
# ddp_scaling.sh, ddp_quick.sh, ddp_probe.sh, mqar_sweep.sh, attn_variants.sh. Unpacks the Debian packages that machine
# lacks when they were carried in .deps (see ../shared/gpu/README.md), puts their libraries on the path,
# and defines configure_gpu_build [DIR] (default build-gpu): the Release, sm_90 CMake configure they share, and
# build_gpu TARGETS: that configure and those targets, timed.
if [ -f .deps/install-debs.sh ] && [ -d .deps/debs ]; then
  # shellcheck disable=SC1091
  source .deps/install-debs.sh .deps/debs /opt/deps > /dev/null
fi
BLAS_DIR=/opt/deps/usr/lib/x86_64-linux-gnu/openblas-pthread
export LD_LIBRARY_PATH="$BLAS_DIR:/opt/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
# the GPU machines have 16+ cores; leave a small machine its OpenMP default
if [ "$(nproc)" -ge 8 ]; then export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}; fi

configure_gpu_build() {
  cmake -S . -B "${1:-build-gpu}" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DCMAKE_LIBRARY_PATH="$BLAS_DIR" -DCMAKE_CXX_FLAGS="-I/opt/deps/usr/include/x86_64-linux-gnu/openblas-pthread"
}

# configure_gpu_build, then the given targets into build-gpu (log: $OUT/build.log). Prints the time taken, or
# the first errors and returns 1.
build_gpu() {
  local t0
  t0=$(date +%s)
  configure_gpu_build > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; return 1; }
  cmake --build build-gpu -j "$(nproc)" --target "$@" >> "$OUT/build.log" 2>&1 ||
    { grep -E "error" -A3 "$OUT/build.log" | head -30; return 1; }
  echo "build $(( $(date +%s) - t0 )) s"
}
