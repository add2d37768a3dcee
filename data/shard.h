// Token shards: a 64-byte versioned header followed by the tokens as little-endian u16 or u32.
//
//   offset size  field
//        0    8  magic "SQMXTOKS"
//        8    4  version (1)
//       12    4  bytes per token (2 = u16, 4 = u32)
//       16    8  token count
//       24    8  hash64 of the token bytes (data/hash.h)
//       32    4  vocabulary size (every token is < this)
//       36    4  header size (64)
//       40   16  reserved, zero
//       56    8  hash64 of header bytes 0..55
//
// Shards are memory-mapped for reading. A file that is too short, has another magic, a newer version, a
// bad header hash, a size that disagrees with the count, or a payload hash mismatch is refused with a
// message that names the file and says what to do.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace seqmix::data {

inline constexpr char kShardMagic[8] = {'S', 'Q', 'M', 'X', 'T', 'O', 'K', 'S'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderBytes = 64;

// Smallest token width that holds ids < vocab_size: 2 up to 65536, else 4.
uint32_t token_bytes_for_vocab(int64_t vocab_size);

struct ShardInfo {
  uint32_t version = 0;
  uint32_t token_bytes = 0;
  uint64_t count = 0;
  uint64_t payload_hash = 0;
  uint32_t vocab_size = 0;
};

// Writes tokens (each in [0, vocab_size)) atomically: temp file, fsync, rename. Returns the header written.
ShardInfo write_shard(const std::string& path, std::span<const int32_t> tokens, int64_t vocab_size);

class ShardReader {
 public:
  // Maps and validates `path`; verify_payload = false skips the payload hash (header checks still run).
  explicit ShardReader(const std::string& path, bool verify_payload = true);
  ~ShardReader();
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;
  ShardReader(ShardReader&& o) noexcept;
  ShardReader& operator=(ShardReader&& o) noexcept;

  const ShardInfo& info() const { return info_; }
  uint64_t size() const { return info_.count; }
  const std::string& path() const { return path_; }
  int32_t operator[](uint64_t i) const {
    return info_.token_bytes == 2 ? static_cast<int32_t>(reinterpret_cast<const uint16_t*>(data_)[i])
                                  : static_cast<int32_t>(reinterpret_cast<const uint32_t*>(data_)[i]);
  }
  // Copies tokens [start, start + n) to out as int32; the range must lie inside the shard.
  void copy(uint64_t start, uint64_t n, int32_t* out) const;

 private:
  void release();
  std::string path_;
  void* map_ = nullptr;
  size_t map_len_ = 0;
  const unsigned char* data_ = nullptr;
  ShardInfo info_;
};

}  // namespace seqmix::data
