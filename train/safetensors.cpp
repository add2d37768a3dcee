#include "train/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>

#include "data/hash.h"
#include "data/json.h"

namespace seqmix::train {

namespace fs = std::filesystem;
namespace json = seqmix::data::json;

namespace {

constexpr uint64_t kMaxHeaderBytes = 100000000;  // the reference implementation's limit

std::string parent_dir(const std::string& path) {
  fs::path p = fs::path(path).parent_path();
  return p.empty() ? std::string(".") : p.string();
}

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    SEQMIX_CHECK(w > 0, "cannot write ", path, ": ", std::strerror(errno),
                 "; check free disk space and permissions");
    p += w;
    n -= size_t(w);
  }
}

// Reads exactly n bytes at `offset`; returns the number read (less only at end of file).
size_t pread_full(int fd, void* data, size_t n, uint64_t offset, const std::string& path) {
  char* p = static_cast<char*>(data);
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::pread(fd, p + done, n - done, off_t(offset + done));
    if (r < 0 && errno == EINTR) continue;
    SEQMIX_CHECK(r >= 0, "cannot read ", path, ": ", std::strerror(errno));
    if (r == 0) break;
    done += size_t(r);
  }
  return done;
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Streams bytes into a file while checksumming them; see write_file_durable for the semantics.
class DurableWriter {
 public:
  DurableWriter(const std::string& path, bool atomic) : final_(path), atomic_(atomic) {
    tmp_ = atomic ? path + ".tmp." + std::to_string(::getpid()) : path;
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    SEQMIX_CHECK(fd_ >= 0, "cannot create ", tmp_, ": ", std::strerror(errno),
                 "; check that the directory exists and is writable");
  }
  ~DurableWriter() {
    if (fd_ >= 0) ::close(fd_);
    if (!done_) ::unlink(tmp_.c_str());  // never leave a partial file behind
  }
  void write(const void* data, size_t n) {
    if (n == 0) return;
    write_all(fd_, data, n, tmp_);
    hasher_.update(data, n);
  }
  FileDigest finish() {
    SEQMIX_CHECK(::fsync(fd_) == 0, "fsync of ", tmp_, " failed: ", std::strerror(errno));
    int rc = ::close(fd_);
    fd_ = -1;
    SEQMIX_CHECK(rc == 0, "cannot close ", tmp_, ": ", std::strerror(errno));
    if (atomic_) {
      SEQMIX_CHECK(::rename(tmp_.c_str(), final_.c_str()) == 0, "cannot rename ", tmp_, " to ", final_, ": ",
                   std::strerror(errno));
      fsync_dir(parent_dir(final_));
    }
    done_ = true;
    FileDigest d;
    d.bytes = hasher_.bytes();
    d.hash = hasher_.finish();
    return d;
  }

 private:
  std::string final_, tmp_;
  bool atomic_;
  int fd_ = -1;
  bool done_ = false;
  ChunkedHasher hasher_;
};

int dtype_rank(DType dt) {  // alignment class: wider first
  return -int(dtype_size(dt));
}

[[noreturn]] void bad_file(const std::string& path, const std::string& what) {
  SEQMIX_FAIL("safetensors file ", path, ": ", what);
}

// A JSON number that must be a non-negative integer (shapes, offsets).
uint64_t as_index(const json::Value& v, const std::string& path, const std::string& what) {
  if (!v.is_number() || !(v.num >= 0) || v.num != std::floor(v.num) || v.num > 9007199254740992.0)
    bad_file(path, what + " must be a non-negative integer");
  return uint64_t(v.num);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// dtypes
// ---------------------------------------------------------------------------------------------

const char* safetensors_dtype_name(DType dt) {
  switch (dt) {
    case DType::F64: return "F64";
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::U8: return "U8";
  }
  SEQMIX_FAIL("safetensors: unknown dtype");
}

DType safetensors_dtype_from_name(const std::string& name) {
  if (name == "F64") return DType::F64;
  if (name == "F32") return DType::F32;
  if (name == "BF16") return DType::BF16;
  if (name == "F16") return DType::F16;
  if (name == "I64") return DType::I64;
  if (name == "I32") return DType::I32;
  if (name == "U8") return DType::U8;
  SEQMIX_FAIL("dtype \"", name, "\" is not supported by seqmix (supported: F64, F32, BF16, F16, I64, I32, U8)");
}

// ---------------------------------------------------------------------------------------------
// checksums and durable writes
// ---------------------------------------------------------------------------------------------

void ChunkedHasher::update(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  total_ += n;
  if (!buf_.empty()) {  // top up the partial chunk first
    size_t take = std::min(n, kChunk - buf_.size());
    buf_.insert(buf_.end(), p, p + take);
    p += take;
    n -= take;
    if (buf_.size() == kChunk) {
      chunk_hashes_.push_back(data::hash64(buf_.data(), kChunk, 0));
      buf_.clear();
    }
  }
  // whole chunks straight from the input, hashed in parallel
  const int64_t full = int64_t(n / kChunk);
  if (full > 0) {
    size_t base = chunk_hashes_.size();
    chunk_hashes_.resize(base + size_t(full));
    uint64_t* out = chunk_hashes_.data() + base;
#pragma omp parallel for schedule(static) if (full > 1)
    for (int64_t c = 0; c < full; ++c) out[c] = data::hash64(p + size_t(c) * kChunk, kChunk, 0);
    p += size_t(full) * kChunk;
    n -= size_t(full) * kChunk;
  }
  if (n > 0) buf_.insert(buf_.end(), p, p + n);
}

uint64_t ChunkedHasher::finish() {
  if (!buf_.empty()) {
    chunk_hashes_.push_back(data::hash64(buf_.data(), buf_.size(), 0));
    buf_.clear();
  }
  std::vector<unsigned char> le(chunk_hashes_.size() * 8);
  for (size_t i = 0; i < chunk_hashes_.size(); ++i)
    for (int b = 0; b < 8; ++b) le[i * 8 + b] = static_cast<unsigned char>(chunk_hashes_[i] >> (8 * b));
  return data::hash64(le.data(), le.size(), total_);
}

FileDigest file_checksum(const std::string& path) {
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  SEQMIX_CHECK(f.fd >= 0, "cannot open ", path, ": ", std::strerror(errno));
  ChunkedHasher h;
  std::vector<unsigned char> buf(ChunkedHasher::kChunk * 16);
  uint64_t off = 0;
  for (;;) {
    size_t got = pread_full(f.fd, buf.data(), buf.size(), off, path);
    if (got == 0) break;
    h.update(buf.data(), got);
    off += got;
    if (got < buf.size()) break;
  }
  FileDigest d;
  d.bytes = h.bytes();
  d.hash = h.finish();
  return d;
}

std::string hash_hex(uint64_t h) {
  static const char* digits = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, h >>= 4) s[size_t(i)] = digits[h & 15];
  return s;
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);  // EINVAL on filesystems without directory fsync: nothing more to do
  ::close(fd);
}

FileDigest write_file_durable(const std::string& path, const std::string& bytes, bool atomic) {
  DurableWriter w(path, atomic);
  w.write(bytes.data(), bytes.size());
  return w.finish();
}

// ---------------------------------------------------------------------------------------------
// save
// ---------------------------------------------------------------------------------------------

FileDigest write_safetensors(const std::string& path, const NamedTensors& tensors,
                             const std::map<std::string, std::string>& metadata, bool atomic) {
  // validate names, fix the layout
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    SEQMIX_CHECK(t.defined(), "save_safetensors(", path, "): tensor '", name, "' is undefined");
    SEQMIX_CHECK(name != "__metadata__", "save_safetensors(", path,
                 "): '__metadata__' is reserved and cannot name a tensor");
    SEQMIX_CHECK(seen.insert(name).second, "save_safetensors(", path, "): duplicate tensor name '", name, "'");
  }
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return dtype_rank(tensors[a].second.dtype()) < dtype_rank(tensors[b].second.dtype());
  });

  std::string header = "{";
  bool first = true;
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool f2 = true;
    for (const auto& [k, v] : metadata) {
      if (!f2) header += ",";
      f2 = false;
      json::append_quoted(header, k);
      header += ":";
      json::append_quoted(header, v);
    }
    header += "}";
    first = false;
  }
  uint64_t offset = 0;
  for (size_t i : order) {
    const auto& [name, t] = tensors[i];
    if (!first) header += ",";
    first = false;
    json::append_quoted(header, name);
    header += ":{\"dtype\":\"";
    header += safetensors_dtype_name(t.dtype());
    header += "\",\"shape\":[";
    for (int d = 0; d < t.dim(); ++d) {
      if (d) header += ",";
      header += std::to_string(t.shape()[size_t(d)]);
    }
    uint64_t nb = t.nbytes();
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + nb) + "]}";
    offset += nb;
  }
  header += "}";
  while (header.size() % 8 != 0) header += ' ';
  SEQMIX_CHECK(header.size() <= kMaxHeaderBytes, "save_safetensors(", path, "): header of ", header.size(),
               " bytes exceeds the format's limit of 100000000 bytes (too many tensors)");

  DurableWriter w(path, atomic);
  unsigned char len[8];
  for (int b = 0; b < 8; ++b) len[b] = static_cast<unsigned char>(uint64_t(header.size()) >> (8 * b));
  w.write(len, 8);
  w.write(header.data(), header.size());
  for (size_t i : order) {
    const Tensor& t = tensors[i].second;
    if (t.numel() == 0) continue;
    Tensor c = t.is_cpu() ? t.contiguous() : t.contiguous().cpu();
    w.write(c.data_ptr(), c.nbytes());
  }
  return w.finish();
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  write_safetensors(path, tensors, metadata, /*atomic=*/true);
}

// ---------------------------------------------------------------------------------------------
// load
// ---------------------------------------------------------------------------------------------

NamedTensors load_safetensors(const std::string& path, std::map<std::string, std::string>* metadata) {
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  SEQMIX_CHECK(f.fd >= 0, "cannot open safetensors file ", path, ": ", std::strerror(errno));
  struct stat st {};
  SEQMIX_CHECK(::fstat(f.fd, &st) == 0, "cannot stat ", path, ": ", std::strerror(errno));
  SEQMIX_CHECK(S_ISREG(st.st_mode), "safetensors file ", path, " is not a regular file");
  const uint64_t file_size = uint64_t(st.st_size);
  if (file_size < 8)
    bad_file(path, "only " + std::to_string(file_size) + " bytes long, too short for a safetensors header "
                   "(truncated, or not a safetensors file)");

  unsigned char len[8];
  SEQMIX_CHECK(pread_full(f.fd, len, 8, 0, path) == 8, "cannot read the header of ", path);
  uint64_t n = 0;
  for (int b = 7; b >= 0; --b) n = (n << 8) | len[b];
  if (n < 2 || n > kMaxHeaderBytes)
    bad_file(path, "bad header size " + std::to_string(n) + " (must be 2 .. 100000000; not a safetensors file?)");
  if (8 + n > file_size)
    bad_file(path, "header size " + std::to_string(n) + " exceeds the file size of " + std::to_string(file_size) +
                       " bytes (truncated, or not a safetensors file)");
  std::string header(n, '\0');
  SEQMIX_CHECK(pread_full(f.fd, header.data(), n, 8, path) == n, "cannot read the header of ", path);
  if (header[0] != '{') bad_file(path, "the header does not start with '{' (not a safetensors file?)");

  json::Value root;
  try {
    root = json::parse(header, "the header");
  } catch (const Error& e) {
    bad_file(path, std::string("JSON error in ") + e.what());
  }
  if (!root.is_object()) bad_file(path, "the header is not a JSON object");

  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  std::set<std::string> names;
  for (const auto& [key, val] : root.obj) {
    if (key == "__metadata__") {
      if (!val.is_object() && !val.is_null()) bad_file(path, "__metadata__ is not an object");
      for (const auto& [mk, mv] : val.obj) {
        if (!mv.is_string()) bad_file(path, "__metadata__ value of '" + mk + "' is not a string");
        if (metadata) (*metadata)[mk] = mv.str;
      }
      continue;
    }
    const std::string where = "tensor '" + key + "'";
    if (!names.insert(key).second) bad_file(path, "duplicate " + where);
    if (!val.is_object()) bad_file(path, where + " is not described by a JSON object");
    const json::Value* dt = val.find("dtype");
    const json::Value* sh = val.find("shape");
    const json::Value* off = val.find("data_offsets");
    if (!dt || !dt->is_string()) bad_file(path, where + " has no \"dtype\" string");
    if (!sh || !sh->is_array()) bad_file(path, where + " has no \"shape\" array");
    if (!off || !off->is_array() || off->arr.size() != 2)
      bad_file(path, where + " has no \"data_offsets\" [begin, end] array");
    Entry e;
    e.name = key;
    try {
      e.dtype = safetensors_dtype_from_name(dt->str);
    } catch (const Error& err) {
      bad_file(path, where + ": " + err.what());
    }
    uint64_t numel = 1;
    bool overflow = false;
    for (const auto& d : sh->arr) {
      uint64_t s = as_index(d, path, where + " shape entries");
      e.shape.push_back(int64_t(s));
      if (s != 0 && numel > (uint64_t(1) << 62) / s) overflow = true;
      numel *= s;
    }
    if (overflow) bad_file(path, where + " has an impossibly large shape " + shape_str(e.shape));
    e.begin = as_index(off->arr[0], path, where + " data_offsets");
    e.end = as_index(off->arr[1], path, where + " data_offsets");
    if (e.end < e.begin)
      bad_file(path, where + " has data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                         "] with end before begin");
    if (e.end - e.begin != numel * dtype_size(e.dtype))
      bad_file(path, where + " has data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                         "] (" + std::to_string(e.end - e.begin) + " bytes) but " + dt->str + " " +
                         shape_str(e.shape) + " needs " + std::to_string(numel * dtype_size(e.dtype)) + " bytes");
    entries.push_back(std::move(e));
  }

  // the tensors must tile the data part exactly, as the reference implementation requires
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin < b.begin || (a.begin == b.begin && a.end < b.end);
  });
  const uint64_t data_len = file_size - 8 - n;
  uint64_t expect = 0;
  for (const Entry& e : entries) {
    if (e.begin != expect)
      bad_file(path, "tensor '" + e.name + "' data_offsets [" + std::to_string(e.begin) + ", " +
                         std::to_string(e.end) + "] " + (e.begin < expect ? "overlap the previous tensor" : "leave a gap") +
                         " (expected begin " + std::to_string(expect) + ")");
    expect = e.end;
  }
  if (expect > data_len)
    bad_file(path, "file is shorter than declared: the header declares " + std::to_string(expect) +
                       " bytes of tensor data but only " + std::to_string(data_len) +
                       " are present (truncated; an interrupted copy or write?)");
  if (expect < data_len)
    bad_file(path, "file is longer than declared: " + std::to_string(data_len - expect) +
                       " bytes after the last tensor (corrupt or not a safetensors file)");

  NamedTensors out;
  out.reserve(entries.size());
  for (const Entry& e : entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype, Device::cpu());
    size_t nb = size_t(e.end - e.begin);
    if (nb > 0 && pread_full(f.fd, t.data_ptr(), nb, 8 + n + e.begin, path) != nb)
      bad_file(path, "file shrank while reading tensor '" + e.name + "'");
    out.emplace_back(e.name, std::move(t));
  }
  return out;
}

}  // namespace seqmix::train
