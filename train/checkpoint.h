// Checkpoints: RUN_DIR/checkpoints/step_N/ holds
//   model.safetensors      the parameters, f32, by name (`layers.3.mixer.q_proj.weight`), loadable by
//                          the safetensors library; metadata {"format": "pt", "seqmix_step": "N"}
//   optimizer.safetensors  AdamW::state_tensors() ("exp_avg.<name>", "exp_avg_sq.<name>"), full tensors
//   trainer_state.json     step, tokens_seen, data_seed, rng_seed, rng_offset, optimizer_steps,
//                          world_size (informational: nothing depends on it), elapsed_seconds,
//                          saved_at_unix, and "extra": the trainer's own JSON object, kept verbatim
//   manifest.json          written last: {"format": "seqmix-checkpoint", "version": 1,
//                          "checksum": "hash64-4MiB", "step": N,
//                          "files": {"model.safetensors": {"bytes": B, "hash64": "16 hex digits"}, ...}}
// Checksum "hash64-4MiB" (train/safetensors.h ChunkedHasher): data::hash64 of each 4 MiB chunk, then
// of the chunk hashes seeded with the size; chosen over SHA-256 for speed (~4 GB/s per core against
// ~0.2 GB/s), since a checkpoint is re-hashed on every save and resume. A manifest entry with a
// "sha256" key instead is verified with SHA-256.
//
// Saving writes everything into checkpoints/.tmp-step_N-<pid>/, fsyncs every file and the directory,
// then renames it to step_N (an existing step_N is first renamed away to .old-step_N-<pid> and removed
// after), so step_N is always either absent or complete. A torn or corrupted checkpoint fails
// verification and is never loaded. Leftover .tmp-* / .old-* directories are ignored by every reader
// and removed by a later save once the process that made them is gone.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "train/optimizer.h"
#include "train/safetensors.h"

namespace seqmix::train {

struct TrainerState {
  int64_t step = 0;
  int64_t tokens_seen = 0;
  uint64_t data_seed = 0;
  uint64_t rng_seed = 0, rng_offset = 0;
  int64_t optimizer_steps = 0;
  int world_size = 1;
  double elapsed_seconds = 0;
  std::string extra_json = "{}";  // must be a JSON object; stored and returned verbatim
};

// Saves checkpoints/step_<st.step> under run_dir (created if needed) and returns its path. The
// optimizer_steps field is taken from opt.steps(). Then prunes: keeps the newest keep_last
// checkpoints that look complete (manifest present, every listed file present with its listed size:
// no re-hashing here), and removes all older ones; keep_last <= 0 keeps all.
std::string save_checkpoint(const std::string& run_dir, const TrainerState& st, const NamedTensors& model_params,
                            const AdamW& opt, int keep_last);

struct LoadedCheckpoint {
  std::string dir;
  TrainerState state;
  NamedTensors model, optimizer;  // CPU tensors
};

// Verifies the manifest (every file present with its size and checksum), then reads everything.
// A problem throws seqmix::Error "checkpoint <dir> is corrupt: <file> <what>; delete it or resume from
// an older one".
LoadedCheckpoint load_checkpoint(const std::string& dir);

// Throws the same error as load_checkpoint when `dir` does not verify; reads no tensors.
void verify_checkpoint(const std::string& dir);

// The step_N directories under run_dir/checkpoints, oldest first (by N); others are ignored.
std::vector<std::string> list_checkpoints(const std::string& run_dir);

// The newest checkpoint of run_dir that verifies; newer ones that do not are skipped with a warning
// on stderr. nullopt when there is none.
std::optional<std::string> latest_valid_checkpoint(const std::string& run_dir);

// The checkpoint to resume from, for `--resume ARG`:
//   "auto"                 the latest valid checkpoint of run_dir; "" when run_dir has no checkpoint
//                          at all; an error when it has some but none verifies (never a silent restart)
//   "" / "none"            "" (start fresh)
//   a run directory        its latest valid checkpoint (error if it has none)
//   a checkpoints/ folder  its latest valid step_N
//   a checkpoint directory itself (contains manifest.json)
// Anything else is an error naming the argument and what is accepted.
std::string resolve_resume(const std::string& arg, const std::string& run_dir);

// Copies loaded tensors into `dst` (e.g. the model's parameters) by name. Every destination name must
// be present with the same shape and no source name may be left over; `what` names the source in the
// message ("checkpoint runs/x/checkpoints/step_100 model.safetensors"). Converts dtype and device.
void copy_named_tensors(const NamedTensors& dst, const NamedTensors& src, const std::string& what);

// trainer_state.json text and its parser (exposed for tests and tools).
std::string trainer_state_json(const TrainerState& st);
TrainerState parse_trainer_state(const std::string& text, const std::string& what);

}  // namespace seqmix::train
