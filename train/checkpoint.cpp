#include "train/checkpoint.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "data/hash.h"
#include "data/json.h"

namespace seqmix::train {

namespace fs = std::filesystem;
namespace json = seqmix::data::json;

namespace {

constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kStateFile = "trainer_state.json";
constexpr const char* kManifestFile = "manifest.json";
constexpr const char* kChecksumKind = "hash64-4MiB";

[[noreturn]] void corrupt(const std::string& dir, const std::string& what) {
  SEQMIX_FAIL("checkpoint ", dir, " is corrupt: ", what, "; delete it or resume from an older one");
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SEQMIX_CHECK(in.good(), "cannot open ", path, ": ", std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  SEQMIX_CHECK(!in.bad(), "cannot read ", path);
  return ss.str();
}

// "step_123" -> 123; -1 for any other name.
int64_t step_of(const std::string& name) {
  if (name.size() <= 5 || name.compare(0, 5, "step_") != 0) return -1;
  int64_t v = 0;
  const char* b = name.data() + 5;
  const char* e = name.data() + name.size();
  auto [p, ec] = std::from_chars(b, e, v);
  if (ec != std::errc() || p != e || v < 0) return -1;
  if (name.size() > 6 && name[5] == '0') return -1;  // no leading zeros: one name per step
  return v;
}

// ---- raw top-level members of a (valid) JSON object, so integers keep all 64 bits and "extra"
// ---- stays byte for byte what the trainer wrote.
size_t skip_value(std::string_view s, size_t i);
size_t skip_string(std::string_view s, size_t i) {  // s[i] == '"'
  for (++i; i < s.size(); ++i) {
    if (s[i] == '\\') ++i;
    else if (s[i] == '"') return i + 1;
  }
  return s.size();
}
size_t skip_ws(std::string_view s, size_t i) {
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  return i;
}
size_t skip_value(std::string_view s, size_t i) {
  i = skip_ws(s, i);
  if (i >= s.size()) return i;
  if (s[i] == '"') return skip_string(s, i);
  if (s[i] == '{' || s[i] == '[') {
    int depth = 0;
    while (i < s.size()) {
      char c = s[i];
      if (c == '"') {
        i = skip_string(s, i);
        continue;
      }
      if (c == '{' || c == '[') ++depth;
      if (c == '}' || c == ']') {
        if (--depth == 0) return i + 1;
      }
      ++i;
    }
    return i;
  }
  while (i < s.size() && !std::strchr(",}] \t\r\n", s[i])) ++i;
  return i;
}
std::map<std::string, std::string> raw_members(std::string_view s, const std::string& what) {
  json::Value v = json::parse(s, what);  // validates the syntax
  SEQMIX_CHECK(v.is_object(), what, ": not a JSON object");
  std::map<std::string, std::string> out;
  size_t i = skip_ws(s, 0) + 1;  // past '{'
  while (true) {
    i = skip_ws(s, i);
    if (i >= s.size() || s[i] == '}') break;
    size_t kend = skip_string(s, i);
    std::string key = json::parse(s.substr(i, kend - i), what).str;
    i = skip_ws(s, kend) + 1;  // past ':'
    size_t vb = skip_ws(s, i);
    size_t ve = skip_value(s, vb);
    out[key] = std::string(s.substr(vb, ve - vb));
    i = skip_ws(s, ve);
    if (i < s.size() && s[i] == ',') ++i;
  }
  return out;
}

template <typename T>
T parse_int(const std::map<std::string, std::string>& m, const char* key, const std::string& what) {
  auto it = m.find(key);
  SEQMIX_CHECK(it != m.end(), what, ": missing \"", key, "\"");
  T v{};
  const std::string& s = it->second;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  SEQMIX_CHECK(ec == std::errc() && p == s.data() + s.size(), what, ": \"", key, "\" is not an integer in range: ", s);
  return v;
}

double parse_double(const std::map<std::string, std::string>& m, const char* key, const std::string& what) {
  auto it = m.find(key);
  SEQMIX_CHECK(it != m.end(), what, ": missing \"", key, "\"");
  const std::string& s = it->second;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  SEQMIX_CHECK(!s.empty() && end == s.c_str() + s.size(), what, ": \"", key, "\" is not a number: ", s);
  return v;
}

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// ---- manifest ----
struct ManifestEntry {
  std::string name;
  uint64_t bytes = 0;
  std::string hash64;  // hex, or empty
  std::string sha256;  // hex, or empty
};

std::vector<ManifestEntry> read_manifest(const std::string& dir) {
  const std::string path = (fs::path(dir) / kManifestFile).string();
  std::error_code ec;
  if (!fs::exists(path, ec))
    corrupt(dir, std::string(kManifestFile) + " is missing (the save did not finish?)");
  json::Value m;
  try {
    m = json::parse(read_text(path), kManifestFile);
  } catch (const Error& e) {
    corrupt(dir, std::string(kManifestFile) + " cannot be read: " + e.what());
  }
  const json::Value* fmt = m.find("format");
  if (!m.is_object() || !fmt || fmt->str != "seqmix-checkpoint")
    corrupt(dir, std::string(kManifestFile) + " is not a seqmix checkpoint manifest");
  const json::Value* files = m.find("files");
  if (!files || !files->is_object()) corrupt(dir, std::string(kManifestFile) + " has no \"files\" object");
  std::vector<ManifestEntry> out;
  for (const auto& [name, v] : files->obj) {
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
      corrupt(dir, std::string(kManifestFile) + " lists a bad file name '" + name + "'");
    const json::Value* b = v.find("bytes");
    if (!b || !b->is_number() || b->num < 0)
      corrupt(dir, std::string(kManifestFile) + " has no byte size for " + name);
    ManifestEntry e;
    e.name = name;
    e.bytes = uint64_t(b->num);
    if (const json::Value* h = v.find("hash64"); h && h->is_string()) e.hash64 = h->str;
    if (const json::Value* h = v.find("sha256"); h && h->is_string()) e.sha256 = h->str;
    if (e.hash64.empty() && e.sha256.empty())
      corrupt(dir, std::string(kManifestFile) + " has no checksum for " + name);
    out.push_back(e);
  }
  for (const char* need : {kModelFile, kOptimizerFile, kStateFile}) {
    bool found = false;
    for (const auto& e : out) found = found || e.name == need;
    if (!found) corrupt(dir, std::string(kManifestFile) + " does not list " + need);
  }
  return out;
}

// Manifest present and parsable, every file present with its size (no hashing).
bool looks_complete(const std::string& dir) {
  try {
    for (const ManifestEntry& e : read_manifest(dir)) {
      std::error_code ec;
      auto size = fs::file_size(fs::path(dir) / e.name, ec);
      if (ec || size != e.bytes) return false;
    }
    return true;
  } catch (const Error&) {
    return false;
  }
}

// Renames `dir` out of the way (so a half-deleted checkpoint never looks like one), then deletes it.
void remove_checkpoint_dir(const fs::path& dir) {
  fs::path graveyard = dir.parent_path() / (".old-" + dir.filename().string() + "-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::remove_all(graveyard, ec);
  fs::rename(dir, graveyard, ec);
  fs::remove_all(ec ? dir : graveyard, ec);
  if (ec) std::cerr << "seqmix: warning: could not remove old checkpoint " << dir.string() << ": " << ec.message() << "\n";
}

// Removes .tmp-* / .old-* leftovers of processes that no longer exist.
void remove_stale_leftovers(const fs::path& ckdir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(ckdir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(".tmp-", 0) != 0 && name.rfind(".old-", 0) != 0) continue;
    size_t dash = name.rfind('-');
    long pid = std::strtol(name.c_str() + dash + 1, nullptr, 10);
    if (pid <= 0 || pid == long(::getpid())) continue;
    if (::kill(pid_t(pid), 0) == 0 || errno != ESRCH) continue;  // its owner may still be running
    std::error_code ec2;
    fs::remove_all(entry.path(), ec2);
  }
}

void prune(const fs::path& ckdir, int64_t saved_step, int keep_last) {
  if (keep_last <= 0) return;
  std::vector<std::pair<int64_t, fs::path>> older;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(ckdir, ec)) {
    int64_t s = step_of(entry.path().filename().string());
    if (s < 0 || !entry.is_directory()) continue;
    if (s < saved_step) older.emplace_back(s, entry.path());
    // newer ones (from an earlier run of this directory) are left alone
  }
  std::sort(older.begin(), older.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  int kept = 1;  // the checkpoint just saved
  for (const auto& [s, path] : older) {
    if (kept < keep_last && looks_complete(path.string())) {
      ++kept;
      continue;
    }
    remove_checkpoint_dir(path);
  }
}

std::string format_double(double v) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// trainer_state.json
// ---------------------------------------------------------------------------------------------

std::string trainer_state_json(const TrainerState& st) {
  const std::string extra = trim(st.extra_json.empty() ? std::string("{}") : st.extra_json);
  json::Value ev;
  try {
    ev = json::parse(extra, "TrainerState.extra_json");
  } catch (const Error& e) {
    SEQMIX_FAIL("save_checkpoint: TrainerState.extra_json is not valid JSON: ", e.what());
  }
  SEQMIX_CHECK(ev.is_object(), "save_checkpoint: TrainerState.extra_json must be a JSON object, got: ", extra);
  SEQMIX_CHECK(std::isfinite(st.elapsed_seconds), "save_checkpoint: elapsed_seconds is not finite");
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  std::string s = "{\n";
  s += "  \"format\": \"seqmix-trainer-state\",\n";
  s += "  \"version\": 1,\n";
  s += "  \"step\": " + std::to_string(st.step) + ",\n";
  s += "  \"tokens_seen\": " + std::to_string(st.tokens_seen) + ",\n";
  s += "  \"data_seed\": " + std::to_string(st.data_seed) + ",\n";
  s += "  \"rng_seed\": " + std::to_string(st.rng_seed) + ",\n";
  s += "  \"rng_offset\": " + std::to_string(st.rng_offset) + ",\n";
  s += "  \"optimizer_steps\": " + std::to_string(st.optimizer_steps) + ",\n";
  s += "  \"world_size\": " + std::to_string(st.world_size) + ",\n";
  s += "  \"elapsed_seconds\": " + format_double(st.elapsed_seconds) + ",\n";
  s += "  \"saved_at_unix\": " + std::to_string(std::chrono::duration_cast<std::chrono::seconds>(now).count()) + ",\n";
  s += "  \"extra\": " + extra + "\n";
  s += "}\n";
  return s;
}

TrainerState parse_trainer_state(const std::string& text, const std::string& what) {
  const auto m = raw_members(text, what);
  auto fmt = m.find("format");
  SEQMIX_CHECK(fmt != m.end() && fmt->second == "\"seqmix-trainer-state\"", what, ": not a seqmix trainer state");
  TrainerState st;
  st.step = parse_int<int64_t>(m, "step", what);
  st.tokens_seen = parse_int<int64_t>(m, "tokens_seen", what);
  st.data_seed = parse_int<uint64_t>(m, "data_seed", what);
  st.rng_seed = parse_int<uint64_t>(m, "rng_seed", what);
  st.rng_offset = parse_int<uint64_t>(m, "rng_offset", what);
  st.optimizer_steps = parse_int<int64_t>(m, "optimizer_steps", what);
  st.world_size = parse_int<int>(m, "world_size", what);
  st.elapsed_seconds = parse_double(m, "elapsed_seconds", what);
  auto ex = m.find("extra");
  st.extra_json = ex == m.end() ? std::string("{}") : ex->second;
  SEQMIX_CHECK(!st.extra_json.empty() && st.extra_json[0] == '{', what, ": \"extra\" is not a JSON object");
  return st;
}

// ---------------------------------------------------------------------------------------------
// save
// ---------------------------------------------------------------------------------------------

std::string save_checkpoint(const std::string& run_dir, const TrainerState& st_in, const NamedTensors& model_params,
                            const AdamW& opt, int keep_last) {
  SEQMIX_CHECK(st_in.step >= 0, "save_checkpoint: step must be >= 0, got ", st_in.step);
  TrainerState st = st_in;
  st.optimizer_steps = opt.steps();
  const std::string state_text = trainer_state_json(st);  // validates extra_json before touching disk

  const fs::path ckdir = fs::path(run_dir) / "checkpoints";
  std::error_code ec;
  fs::create_directories(ckdir, ec);
  SEQMIX_CHECK(!ec, "cannot create checkpoint directory ", ckdir.string(), ": ", ec.message());
  fsync_dir(run_dir);  // a new checkpoints/ entry is durable too
  remove_stale_leftovers(ckdir);

  const std::string name = "step_" + std::to_string(st.step);
  const std::string pid = std::to_string(::getpid());
  const fs::path tmp = ckdir / (".tmp-" + name + "-" + pid);
  const fs::path final_dir = ckdir / name;
  fs::remove_all(tmp, ec);
  fs::create_directory(tmp, ec);
  SEQMIX_CHECK(!ec, "cannot create ", tmp.string(), ": ", ec.message());
  try {
    std::vector<std::pair<std::string, FileDigest>> digests;
    digests.emplace_back(kModelFile, write_safetensors((tmp / kModelFile).string(), model_params,
                                                       {{"format", "pt"}, {"seqmix_step", std::to_string(st.step)}},
                                                       /*atomic=*/false));
    digests.emplace_back(kOptimizerFile,
                         write_safetensors((tmp / kOptimizerFile).string(), opt.state_tensors(),
                                           {{"optimizer", "adamw"}, {"steps", std::to_string(opt.steps())}},
                                           /*atomic=*/false));
    digests.emplace_back(kStateFile, write_file_durable((tmp / kStateFile).string(), state_text, false));

    std::string manifest = "{\n  \"format\": \"seqmix-checkpoint\",\n  \"version\": 1,\n";
    manifest += "  \"checksum\": \"" + std::string(kChecksumKind) + "\",\n";
    manifest += "  \"step\": " + std::to_string(st.step) + ",\n  \"files\": {\n";
    for (size_t i = 0; i < digests.size(); ++i) {
      manifest += "    " + json::quoted(digests[i].first) + ": {\"bytes\": " + std::to_string(digests[i].second.bytes) +
                  ", \"hash64\": \"" + hash_hex(digests[i].second.hash) + "\"}";
      manifest += i + 1 < digests.size() ? ",\n" : "\n";
    }
    manifest += "  }\n}\n";
    write_file_durable((tmp / kManifestFile).string(), manifest, false);
    fsync_dir(tmp.string());

    // swap into place: an existing step_N is renamed away first and removed after
    fs::path old;
    if (fs::exists(final_dir, ec)) {
      old = ckdir / (".old-" + name + "-" + pid);
      fs::remove_all(old, ec);
      fs::rename(final_dir, old, ec);
      SEQMIX_CHECK(!ec, "cannot move the existing ", final_dir.string(), " aside: ", ec.message());
    }
    fs::rename(tmp, final_dir, ec);
    SEQMIX_CHECK(!ec, "cannot rename ", tmp.string(), " to ", final_dir.string(), ": ", ec.message());
    fsync_dir(ckdir.string());
    if (!old.empty()) fs::remove_all(old, ec);
  } catch (...) {
    std::error_code ec2;
    fs::remove_all(tmp, ec2);
    throw;
  }
  prune(ckdir, st.step, keep_last);
  return final_dir.string();
}

// ---------------------------------------------------------------------------------------------
// verify / load
// ---------------------------------------------------------------------------------------------

void verify_checkpoint(const std::string& dir) {
  std::error_code ec;
  SEQMIX_CHECK(fs::is_directory(dir, ec), "checkpoint ", dir, " does not exist or is not a directory");
  for (const ManifestEntry& e : read_manifest(dir)) {
    const std::string path = (fs::path(dir) / e.name).string();
    if (!fs::exists(path, ec)) corrupt(dir, e.name + " is missing");
    uint64_t size = fs::file_size(path, ec);
    if (ec) corrupt(dir, e.name + " cannot be read: " + ec.message());
    if (size != e.bytes)
      corrupt(dir, e.name + " has " + std::to_string(size) + " bytes but the manifest says " + std::to_string(e.bytes) +
                       (size < e.bytes ? " (truncated)" : ""));
    if (!e.hash64.empty()) {
      FileDigest d;
      try {
        d = file_checksum(path);
      } catch (const Error& err) {
        corrupt(dir, e.name + " cannot be read: " + err.what());
      }
      if (hash_hex(d.hash) != e.hash64)
        corrupt(dir, e.name + " does not match its checksum (hash64 " + hash_hex(d.hash) + ", manifest says " +
                         e.hash64 + ")");
    } else {
      std::string h = data::sha256_file(path);
      if (h != e.sha256)
        corrupt(dir, e.name + " does not match its checksum (sha256 " + h + ", manifest says " + e.sha256 + ")");
    }
  }
}

LoadedCheckpoint load_checkpoint(const std::string& dir) {
  verify_checkpoint(dir);
  LoadedCheckpoint out;
  out.dir = dir;
  const fs::path d(dir);
  try {
    out.state = parse_trainer_state(read_text((d / kStateFile).string()), kStateFile);
  } catch (const Error& e) {
    corrupt(dir, std::string(kStateFile) + ": " + e.what());
  }
  try {
    out.model = load_safetensors((d / kModelFile).string());
    out.optimizer = load_safetensors((d / kOptimizerFile).string());
  } catch (const Error& e) {
    corrupt(dir, e.what());
  }
  return out;
}

std::vector<std::string> list_checkpoints(const std::string& run_dir) {
  const fs::path ckdir = fs::path(run_dir) / "checkpoints";
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  if (!fs::is_directory(ckdir, ec)) return {};
  for (const auto& entry : fs::directory_iterator(ckdir, ec)) {
    int64_t s = step_of(entry.path().filename().string());
    std::error_code ec2;
    if (s >= 0 && entry.is_directory(ec2)) found.emplace_back(s, entry.path().string());
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

std::optional<std::string> latest_valid_checkpoint(const std::string& run_dir) {
  const auto all = list_checkpoints(run_dir);
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    try {
      verify_checkpoint(*it);
      return *it;
    } catch (const Error& e) {
      std::cerr << "seqmix: warning: skipping checkpoint " << *it << ": " << e.what() << "\n";
    }
  }
  return std::nullopt;
}

std::string resolve_resume(const std::string& arg, const std::string& run_dir) {
  if (arg.empty() || arg == "none") return "";
  if (arg == "auto") {
    if (list_checkpoints(run_dir).empty()) return "";
    auto latest = latest_valid_checkpoint(run_dir);
    SEQMIX_CHECK(latest.has_value(), "--resume auto: every checkpoint under ", (fs::path(run_dir) / "checkpoints").string(),
                 " is corrupt or incomplete (see the warnings above); delete that directory to start the run afresh");
    return *latest;
  }
  std::error_code ec;
  const fs::path p(arg);
  const std::string accepted = "; --resume takes auto, a run directory, or a checkpoint directory (RUN/checkpoints/step_N)";
  SEQMIX_CHECK(fs::exists(p, ec), "--resume ", arg, ": no such file or directory", accepted);
  SEQMIX_CHECK(fs::is_directory(p, ec), "--resume ", arg, ": not a directory", accepted);
  if (fs::exists(p / kManifestFile, ec)) return arg;
  if (step_of(p.filename().string()) >= 0)
    corrupt(arg, std::string(kManifestFile) + " is missing (the save did not finish?)");
  fs::path run = p;
  if (!fs::is_directory(p / "checkpoints", ec) && p.filename() == "checkpoints") run = p.parent_path();
  if (fs::is_directory(run / "checkpoints", ec)) {
    auto latest = latest_valid_checkpoint(run.string());
    SEQMIX_CHECK(latest.has_value(), "--resume ", arg, ": the run directory has no valid checkpoint under ",
                 (run / "checkpoints").string(), " (pass --resume auto to start fresh when there is none)");
    return *latest;
  }
  SEQMIX_FAIL("--resume ", arg, ": neither a run directory (no checkpoints/ inside) nor a checkpoint directory (no ",
              kManifestFile, " inside)", accepted);
}

void copy_named_tensors(const NamedTensors& dst, const NamedTensors& src, const std::string& what) {
  std::map<std::string, const Tensor*> by_name;
  for (const auto& [name, t] : src) by_name[name] = &t;
  for (const auto& [name, t] : dst) {
    auto it = by_name.find(name);
    SEQMIX_CHECK(it != by_name.end(), what, " has no tensor '", name,
                 "' (was it saved with a different model config?)");
    SEQMIX_CHECK(it->second->shape() == t.shape(), what, ": tensor '", name, "' has shape ",
                 shape_str(it->second->shape()), " but the model expects ", shape_str(t.shape()));
  }
  if (by_name.size() != dst.size()) {
    std::map<std::string, int> want;
    for (const auto& [name, t] : dst) want[name] = 1;
    for (const auto& [name, t] : by_name)
      SEQMIX_CHECK(want.count(name), what, " has a tensor '", name,
                   "' that the model does not have (was it saved with a different model config?)");
  }
  for (const auto& [name, t] : dst) {
    Tensor d = t;
    d.copy_(*by_name.at(name));
  }
}

}  // namespace seqmix::train
