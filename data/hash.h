// Checksums for the data layer: a fast 64-bit hash for shard payloads (checked on every open) and SHA-256
// for the manifest (so a user can check files with the standard `sha256sum`).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace seqmix::data {

// Fast non-cryptographic 64-bit hash of a byte buffer (4 multiply-xor lanes over 8-byte words, then a
// final mix). Stable across platforms of the same endianness; used only to detect corruption.
uint64_t hash64(const void* data, size_t n, uint64_t seed = 0);

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  std::string hex_digest();  // finishes; the object must not be updated afterwards

 private:
  void block(const unsigned char* p);
  uint32_t h_[8];
  unsigned char buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

std::string sha256_hex(std::string_view bytes);
// SHA-256 of a whole file; throws seqmix::Error naming the file if it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace seqmix::data
