# Sourced by the emulation scripts (scripts/lr_tc_emulate.sh, scripts/delta_emulate.sh): CUDA_INC, and SANFLAGS /
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
