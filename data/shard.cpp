#include "data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "core/error.h"
#include "data/hash.h"

namespace seqmix::data {

static_assert(std::endian::native == std::endian::little, "token shards are little-endian");

uint32_t token_bytes_for_vocab(int64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

namespace {
template <typename T>
void put(unsigned char* h, size_t off, T v) {
  std::memcpy(h + off, &v, sizeof(T));
}
template <typename T>
T get(const unsigned char* h, size_t off) {
  T v;
  std::memcpy(&v, h + off, sizeof(T));
  return v;
}

void write_all(int fd, const void* p, size_t n, const std::string& path) {
  const auto* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t w = ::write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    SEQMIX_CHECK(w > 0, "writing ", path, " failed: ", std::strerror(errno), " (disk full?)");
    c += w;
    n -= static_cast<size_t>(w);
  }
}
}  // namespace

ShardInfo write_shard(const std::string& path, std::span<const int32_t> tokens, int64_t vocab_size) {
  SEQMIX_CHECK(vocab_size > 0 && vocab_size < (int64_t(1) << 32), "write_shard ", path,
               ": vocab_size ", vocab_size, " must be in [1, 2^32)");
  ShardInfo info;
  info.version = kShardVersion;
  info.token_bytes = token_bytes_for_vocab(vocab_size);
  info.count = tokens.size();
  info.vocab_size = static_cast<uint32_t>(vocab_size);

  std::vector<unsigned char> payload(tokens.size() * info.token_bytes);
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int32_t t = tokens[i];
    SEQMIX_CHECK(t >= 0 && t < vocab_size, "write_shard ", path, ": token ", t, " at position ", i,
                 " is outside the vocabulary [0, ", vocab_size, ")");
    if (info.token_bytes == 2) {
      const auto v = static_cast<uint16_t>(t);
      std::memcpy(payload.data() + 2 * i, &v, 2);
    } else {
      const auto v = static_cast<uint32_t>(t);
      std::memcpy(payload.data() + 4 * i, &v, 4);
    }
  }
  info.payload_hash = hash64(payload.data(), payload.size());

  unsigned char h[kShardHeaderBytes] = {};
  std::memcpy(h, kShardMagic, 8);
  put<uint32_t>(h, 8, info.version);
  put<uint32_t>(h, 12, info.token_bytes);
  put<uint64_t>(h, 16, info.count);
  put<uint64_t>(h, 24, info.payload_hash);
  put<uint32_t>(h, 32, info.vocab_size);
  put<uint32_t>(h, 36, static_cast<uint32_t>(kShardHeaderBytes));
  put<uint64_t>(h, 56, hash64(h, 56));

  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  SEQMIX_CHECK(fd >= 0, "cannot create ", tmp, ": ", std::strerror(errno),
               "; check that the output directory exists and is writable");
  try {
    write_all(fd, h, sizeof(h), tmp);
    write_all(fd, payload.data(), payload.size(), tmp);
    SEQMIX_CHECK(::fsync(fd) == 0, "fsync of ", tmp, " failed: ", std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  SEQMIX_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename ", tmp, " to ", path, ": ",
               std::strerror(errno));
  return info;
}

ShardReader::ShardReader(const std::string& path, bool verify_payload) : path_(path) {
  const std::string redo = "; re-create it with `seqmix prepare` (delete the dataset directory first)";
  int fd = ::open(path.c_str(), O_RDONLY);
  SEQMIX_CHECK(fd >= 0, "cannot open token shard ", path, ": ", std::strerror(errno),
               "; check the dataset directory (seqmix prepare ... --out DIR makes one)");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    SEQMIX_FAIL("cannot stat token shard ", path, ": ", std::strerror(errno));
  }
  const auto file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < kShardHeaderBytes) {
    ::close(fd);
    SEQMIX_FAIL("token shard ", path, " is ", file_size, " bytes, shorter than the ", kShardHeaderBytes,
                "-byte header: truncated or not a seqmix shard", redo);
  }
  map_len_ = static_cast<size_t>(file_size);
  map_ = ::mmap(nullptr, map_len_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    SEQMIX_FAIL("cannot memory-map token shard ", path, ": ", std::strerror(errno));
  }
  try {
    const auto* h = static_cast<const unsigned char*>(map_);
    SEQMIX_CHECK(std::memcmp(h, kShardMagic, 8) == 0, "file ", path,
                 " is not a seqmix token shard (wrong magic); point data.path at a directory made by "
                 "`seqmix prepare`");
    info_.version = get<uint32_t>(h, 8);
    SEQMIX_CHECK(info_.version <= kShardVersion && info_.version >= 1, "token shard ", path, " has format version ",
                 info_.version, " but this seqmix reads up to version ", kShardVersion,
                 "; update seqmix or re-create the shard");
    SEQMIX_CHECK(get<uint64_t>(h, 56) == hash64(h, 56), "token shard ", path,
                 " has a corrupt header (header checksum mismatch)", redo);
    info_.token_bytes = get<uint32_t>(h, 12);
    info_.count = get<uint64_t>(h, 16);
    info_.payload_hash = get<uint64_t>(h, 24);
    info_.vocab_size = get<uint32_t>(h, 32);
    const uint32_t header_size = get<uint32_t>(h, 36);
    SEQMIX_CHECK(info_.token_bytes == 2 || info_.token_bytes == 4, "token shard ", path,
                 " declares an unsupported token width of ", info_.token_bytes, " bytes", redo);
    SEQMIX_CHECK(header_size == kShardHeaderBytes, "token shard ", path, " declares a header of ", header_size,
                 " bytes (expected ", kShardHeaderBytes, ")", redo);
    const uint64_t want = kShardHeaderBytes + info_.count * info_.token_bytes;
    SEQMIX_CHECK(file_size == want, "token shard ", path, " is ", file_size, " bytes but its header says ",
                 info_.count, " tokens (", want, " bytes): ", file_size < want ? "truncated" : "trailing garbage",
                 redo);
    data_ = h + kShardHeaderBytes;
    if (verify_payload) {
      SEQMIX_CHECK(hash64(data_, info_.count * info_.token_bytes) == info_.payload_hash, "token shard ", path,
                   " is corrupt (payload checksum mismatch)", redo);
    }
  } catch (...) {
    release();
    throw;
  }
}

void ShardReader::copy(uint64_t start, uint64_t n, int32_t* out) const {
  SEQMIX_CHECK(start <= info_.count && n <= info_.count - start, "ShardReader::copy: range [", start, ", ",
               start + n, ") outside ", path_, " (", info_.count, " tokens)");
  if (info_.token_bytes == 2) {
    const auto* p = reinterpret_cast<const uint16_t*>(data_) + start;
    for (uint64_t i = 0; i < n; ++i) out[i] = p[i];
  } else {
    const auto* p = reinterpret_cast<const uint32_t*>(data_) + start;
    for (uint64_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(p[i]);
  }
}

void ShardReader::release() {
  if (map_) ::munmap(map_, map_len_);
  map_ = nullptr;
  data_ = nullptr;
  map_len_ = 0;
}

ShardReader::~ShardReader() { release(); }

ShardReader::ShardReader(ShardReader&& o) noexcept
    : path_(std::move(o.path_)), map_(o.map_), map_len_(o.map_len_), data_(o.data_), info_(o.info_) {
  o.map_ = nullptr;
  o.data_ = nullptr;
  o.map_len_ = 0;
}

ShardReader& ShardReader::operator=(ShardReader&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    map_ = o.map_;
    map_len_ = o.map_len_;
    data_ = o.data_;
    info_ = o.info_;
    o.map_ = nullptr;
    o.data_ = nullptr;
    o.map_len_ = 0;
  }
  return *this;
}

}  // namespace seqmix::data
