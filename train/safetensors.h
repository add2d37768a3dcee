// safetensors files (https://github.com/huggingface/safetensors format): an 8-byte little-endian
// header length N, N bytes of JSON header (padded with spaces so the data starts 8-byte aligned),
// then the tensor bytes back to back. The header maps each name to
//   {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}   (offsets into the data part)
// plus an optional "__metadata__" object of string -> string.
//
// Writing: tensors are laid out in the order given, stably reordered so wider element types come
// first (F64/I64, then F32/I32, then BF16/F16, then U8), which keeps every tensor naturally aligned in
// the file; a list of one dtype keeps its order exactly. Files are written atomically (temp file in
// the same directory, fsync, rename, fsync of the directory).
//
// Reading: returns contiguous CPU tensors in file (data-offset) order; anything that is not a
// complete, well-formed safetensors file is refused with a seqmix::Error naming the file and the
// problem (bad header size, JSON error, unknown dtype, offsets out of range or not tiling the data,
// file shorter or longer than declared).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace seqmix::train {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// The safetensors dtype name ("F32", "BF16", ...) of a seqmix dtype, and back (throws for names
// seqmix has no dtype for, e.g. "BOOL" or "I8").
const char* safetensors_dtype_name(DType dt);
DType safetensors_dtype_from_name(const std::string& name);

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

NamedTensors load_safetensors(const std::string& path, std::map<std::string, std::string>* metadata = nullptr);

// Size and checksum of a written file (see file_checksum below).
struct FileDigest {
  uint64_t bytes = 0;
  uint64_t hash = 0;
};

// Like save_safetensors, also returning the size and checksum of the bytes written (computed while
// writing, no second read). atomic = false writes `path` directly (for files inside a directory that
// is itself renamed into place, as checkpoints are); the file is still fsynced.
FileDigest write_safetensors(const std::string& path, const NamedTensors& tensors,
                             const std::map<std::string, std::string>& metadata, bool atomic);

// The checksum used by checkpoint manifests ("hash64-4MiB"): the file is cut into 4 MiB chunks, each
// chunk hashed with data::hash64 (seed 0), and the little-endian array of chunk hashes hashed again
// with data::hash64 seeded with the file size. Streamable and parallel; about 4 GB/s per core.
class ChunkedHasher {
 public:
  static constexpr size_t kChunk = size_t(4) << 20;
  void update(const void* data, size_t n);
  uint64_t finish();  // the object must not be updated afterwards
  uint64_t bytes() const { return total_; }

 private:
  std::vector<unsigned char> buf_;
  std::vector<uint64_t> chunk_hashes_;
  uint64_t total_ = 0;
};
// Checksum of a whole file (throws naming the file when it cannot be read).
FileDigest file_checksum(const std::string& path);
std::string hash_hex(uint64_t h);  // 16 lower-case hex digits

// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync dir) or, with atomic = false,
// directly (still fsynced). Returns the digest of what was written.
FileDigest write_file_durable(const std::string& path, const std::string& bytes, bool atomic);
// fsync of a directory (makes renames and new entries in it durable). Errors are ignored where the
// filesystem does not support it.
void fsync_dir(const std::string& dir);

}  // namespace seqmix::train
