// safetensors files and training checkpoints: round trips, the exact byte format, refusal of
// truncated / garbled / corrupted files with a message naming the file, pruning, resume resolution.
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "support/test_util.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/safetensors.h"

namespace seqmix::train {
namespace {

namespace fs = std::filesystem;
using seqmix::testing::expect_error_contains;

// A fresh directory under the system temp dir, removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path = fs::temp_directory_path() / ("seqmix_" + std::string(info ? info->name() : "t") + "_" +
                                        std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string str(const std::string& name = "") const { return name.empty() ? path.string() : (path / name).string(); }
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}
std::string raw_bytes(const Tensor& t) {
  Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
}
// A file from a header text and a data part, with a correct length prefix.
std::string make_file(std::string header, const std::string& data) {
  while (header.size() % 8) header += ' ';
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int b = 0; b < 8; ++b) out[size_t(b)] = char((n >> (8 * b)) & 0xff);
  return out + header + data;
}

Tensor f16_tensor(const std::vector<float>& v, const Shape& s) {
  Tensor t = Tensor::empty(s, DType::F16);
  for (size_t i = 0; i < v.size(); ++i) t.data<f16>()[i] = f16(v[i]);
  return t;
}

// ---------------------------------------------------------------------------------------------
// safetensors
// ---------------------------------------------------------------------------------------------

TEST(Safetensors, RoundTripAllDtypesScalarsEmptyAndMetadata) {
  TempDir dir;
  Generator gen(7);
  NamedTensors in = {
      {"u8", Tensor::from_vector<uint8_t>({1, 2, 3, 250, 7}, {5})},
      {"bf16", randn({3, 1}, gen).to(DType::BF16)},
      {"f32.matrix", randn({4, 5}, gen)},
      {"f64", randn({2, 3}, gen, DType::F64)},
      {"f16", f16_tensor({1.5f, -2.0f, 0.25f, 65504.f, 0.f, -0.f, 3.f}, {7})},
      {"i32", Tensor::from_vector<int32_t>({-1, 0, 2147483647}, {3})},
      {"i64", Tensor::from_vector<int64_t>({int64_t(1) << 62, -5}, {2, 1})},
      {"scalar", scalar_tensor(3.25)},
      {"empty", zeros({0, 4})},
      {"layers.3.mixer.q_proj.weight", randn({2, 2, 2}, gen)},
  };
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "quote \" and \xc3\xa9"}};
  const std::string path = dir.str("t.safetensors");
  save_safetensors(path, in, meta);

  std::map<std::string, std::string> meta_back;
  NamedTensors out = load_safetensors(path, &meta_back);
  EXPECT_EQ(meta_back, meta);
  ASSERT_EQ(out.size(), in.size());
  // wider dtypes first, the given order within one width
  std::vector<std::string> order;
  for (auto& [n, t] : out) order.push_back(n);
  EXPECT_EQ(order, (std::vector<std::string>{"f64", "i64", "f32.matrix", "i32", "scalar", "empty",
                                             "layers.3.mixer.q_proj.weight", "bf16", "f16", "u8"}));
  for (const auto& [name, t] : in) {
    auto it = std::find_if(out.begin(), out.end(), [&](auto& p) { return p.first == name; });
    ASSERT_NE(it, out.end()) << name;
    EXPECT_TRUE(it->second.is_cpu());
    EXPECT_EQ(it->second.dtype(), t.dtype()) << name;
    EXPECT_EQ(it->second.shape(), t.shape()) << name;
    EXPECT_EQ(raw_bytes(it->second), raw_bytes(t)) << name;
  }
  // nothing but the file is left in the directory (the temp file was renamed)
  int files = 0;
  for (auto& e : fs::directory_iterator(dir.path)) {
    (void)e;
    ++files;
  }
  EXPECT_EQ(files, 1);
}

TEST(Safetensors, OneDtypeKeepsTheGivenOrder) {
  TempDir dir;
  NamedTensors in = {{"z", zeros({2})}, {"a", ones({3})}, {"m", full({1}, 2.0)}};
  save_safetensors(dir.str("o.safetensors"), in);
  NamedTensors out = load_safetensors(dir.str("o.safetensors"));
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].first, "z");
  EXPECT_EQ(out[1].first, "a");
  EXPECT_EQ(out[2].first, "m");
}

TEST(Safetensors, ExactByteLayout) {
  TempDir dir;
  Tensor a = Tensor::from_vector<float>({1.0f, -2.0f}, {2});
  Tensor b = Tensor::from_vector<bf16>({bf16(1.0f), bf16(2.0f), bf16(3.0f)}, {3});
  const std::string path = dir.str("x.safetensors");
  save_safetensors(path, {{"a", a}, {"b", b}}, {{"k", "v"}});
  const std::string f = read_bytes(path);
  ASSERT_GE(f.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(f[size_t(i)]);
  EXPECT_EQ(n % 8, 0u) << "header padded to 8 bytes";
  ASSERT_EQ(f.size(), 8 + n + 8 + 6);
  const std::string header = f.substr(8, n);
  const std::string expect =
      "{\"__metadata__\":{\"k\":\"v\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[8,14]}}";
  ASSERT_GE(header.size(), expect.size());
  EXPECT_EQ(header.substr(0, expect.size()), expect);
  EXPECT_EQ(header.substr(expect.size()), std::string(header.size() - expect.size(), ' '));
  EXPECT_EQ(f.substr(8 + n, 8), raw_bytes(a));
  EXPECT_EQ(f.substr(8 + n + 8, 6), raw_bytes(b));
  const unsigned char one_le[4] = {0x00, 0x00, 0x80, 0x3f};  // 1.0f little-endian
  EXPECT_EQ(std::memcmp(f.data() + 8 + n, one_le, 4), 0);
}

TEST(Safetensors, RejectsTruncatedAndGarbledFiles) {
  TempDir dir;
  const std::string good = dir.str("good.safetensors");
  save_safetensors(good, {{"w", ones({4, 4})}, {"b", zeros({4})}});
  const std::string bytes = read_bytes(good);
  const std::string bad = dir.str("bad.safetensors");
  auto load_bad = [&] { load_safetensors(bad); };

  write_bytes(bad, bytes.substr(0, bytes.size() - 1));
  expect_error_contains(load_bad, "file is shorter than declared");
  expect_error_contains(load_bad, bad);

  write_bytes(bad, bytes.substr(0, 5));
  expect_error_contains(load_bad, "too short");

  write_bytes(bad, bytes.substr(0, 20));
  expect_error_contains(load_bad, "exceeds the file size");

  std::string huge = bytes;
  huge[5] = char(0x7f);  // header size ~ 2^47
  write_bytes(bad, huge);
  expect_error_contains(load_bad, "bad header size");

  std::string garbled = bytes;
  size_t colon = garbled.find(':', 8);
  garbled[colon] = 'x';
  write_bytes(bad, garbled);
  expect_error_contains(load_bad, "JSON error");

  std::string not_json = bytes;
  not_json[8] = '[';
  write_bytes(bad, not_json);
  expect_error_contains(load_bad, "does not start with '{'");

  write_bytes(bad, bytes + "xyz");
  expect_error_contains(load_bad, "longer than declared");

  write_bytes(bad, make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,100]}}", std::string(100, 'a')));
  expect_error_contains(load_bad, "needs 8 bytes");

  write_bytes(bad, make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                             "\"v\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
                             std::string(20, 'a')));
  expect_error_contains(load_bad, "leave a gap");

  write_bytes(bad, make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                             "\"v\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                             std::string(8, 'a')));
  expect_error_contains(load_bad, "overlap");

  write_bytes(bad, make_file("{\"w\":{\"dtype\":\"BOOL\",\"shape\":[2],\"data_offsets\":[0,2]}}", "ab"));
  expect_error_contains(load_bad, "not supported by seqmix");

  write_bytes(bad, make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", std::string(8, 'a')));
  expect_error_contains(load_bad, "non-negative integer");

  write_bytes(bad, make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", std::string(8, 'a')));
  expect_error_contains(load_bad, "data_offsets");

  expect_error_contains([&] { load_safetensors(dir.str("missing.safetensors")); }, "cannot open safetensors file");
}

TEST(Safetensors, RejectsBadNamesOnSave) {
  TempDir dir;
  expect_error_contains([&] { save_safetensors(dir.str("d.safetensors"), {{"a", ones({1})}, {"a", ones({1})}}); },
                        "duplicate tensor name 'a'");
  expect_error_contains([&] { save_safetensors(dir.str("d.safetensors"), {{"__metadata__", ones({1})}}); },
                        "reserved");
  expect_error_contains([&] { save_safetensors(dir.str("no/such/dir/d.safetensors"), {{"a", ones({1})}}); },
                        "cannot create");
}

TEST(Safetensors, ChunkedHashIsStreamable) {
  // the same bytes give the same checksum whatever the update sizes
  std::string data(ChunkedHasher::kChunk * 2 + 12345, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = char((i * 2654435761u) >> 13);
  ChunkedHasher one;
  one.update(data.data(), data.size());
  ChunkedHasher many;
  size_t at = 0, step = 1;
  while (at < data.size()) {
    size_t n = std::min(step, data.size() - at);
    many.update(data.data() + at, n);
    at += n;
    step = step * 3 + 7;
  }
  EXPECT_EQ(one.bytes(), many.bytes());
  uint64_t h = one.finish();
  EXPECT_EQ(h, many.finish());
  ChunkedHasher flipped;
  std::string d2 = data;
  d2[ChunkedHasher::kChunk + 3] ^= 1;
  flipped.update(d2.data(), d2.size());
  EXPECT_NE(h, flipped.finish());
}

// ---------------------------------------------------------------------------------------------
// checkpoints
// ---------------------------------------------------------------------------------------------

struct TinyModel {
  NamedTensors params;
  explicit TinyModel(uint64_t seed) {
    Generator gen(seed);
    params = {{"embed.weight", randn({5, 3}, gen)},
              {"layers.0.mixer.q_proj.weight", randn({3, 3}, gen)},
              {"layers.0.norm.weight", randn({3}, gen)}};
    for (auto& [n, p] : params) p.requires_grad_(true);
  }
  std::vector<Tensor> tensors() const {
    std::vector<Tensor> v;
    for (auto& [n, p] : params) v.push_back(p);
    return v;
  }
};

void set_grads(const NamedTensors& params, uint64_t seed) {
  Generator gen(seed);
  for (auto& [n, p] : params) {
    Tensor g = randn(p.shape(), gen);
    Tensor(p).set_grad(g);
  }
}

TrainerState sample_state(int64_t step) {
  TrainerState st;
  st.step = step;
  st.tokens_seen = 123456789012345;
  st.data_seed = 0x8000000000000005ull;
  st.rng_seed = 0xFFFFFFFFFFFFFFF1ull;
  st.rng_offset = 987654321;
  st.world_size = 8;
  st.elapsed_seconds = 1234.5678901234567;
  st.extra_json = "{\"loader\": {\"position\": 18446744073709551615, \"epoch\": 2}, \"note\": \"a\\\"b\"}";
  return st;
}

std::string save_step(const std::string& run, int64_t step, TinyModel& m, AdamW& opt, int keep_last) {
  set_grads(m.params, uint64_t(step) + 100);
  opt.step(1e-2);
  return save_checkpoint(run, sample_state(step), m.params, opt, keep_last);
}

void flip_byte(const std::string& path, size_t at_from_end) {
  std::string b = read_bytes(path);
  b[b.size() - 1 - at_from_end] ^= 0x20;
  write_bytes(path, b);
}

TEST(Checkpoint, SaveLoadRoundTrip) {
  TempDir run;
  TinyModel m(1);
  AdamW opt(m.params, AdamWConfig{});
  set_grads(m.params, 11);
  opt.step(1e-2);
  set_grads(m.params, 12);
  opt.step(1e-2);
  const std::string dir = save_checkpoint(run.str(), sample_state(7), m.params, opt, 0);
  EXPECT_EQ(dir, (run.path / "checkpoints" / "step_7").string());
  for (const char* f : {"model.safetensors", "optimizer.safetensors", "trainer_state.json", "manifest.json"})
    EXPECT_TRUE(fs::exists(fs::path(dir) / f)) << f;
  EXPECT_NE(read_bytes(dir + "/manifest.json").find("\"checksum\": \"hash64-4MiB\""), std::string::npos);

  LoadedCheckpoint ck = load_checkpoint(dir);
  EXPECT_EQ(ck.dir, dir);
  const TrainerState want = sample_state(7);
  EXPECT_EQ(ck.state.step, 7);
  EXPECT_EQ(ck.state.tokens_seen, want.tokens_seen);
  EXPECT_EQ(ck.state.data_seed, want.data_seed);
  EXPECT_EQ(ck.state.rng_seed, want.rng_seed);
  EXPECT_EQ(ck.state.rng_offset, want.rng_offset);
  EXPECT_EQ(ck.state.optimizer_steps, 2);  // from the optimizer
  EXPECT_EQ(ck.state.world_size, 8);
  EXPECT_EQ(ck.state.elapsed_seconds, want.elapsed_seconds);
  EXPECT_EQ(ck.state.extra_json, want.extra_json);

  ASSERT_EQ(ck.model.size(), m.params.size());
  for (size_t i = 0; i < m.params.size(); ++i) {
    EXPECT_EQ(ck.model[i].first, m.params[i].first);
    EXPECT_EQ(raw_bytes(ck.model[i].second), raw_bytes(m.params[i].second));
  }
  NamedTensors st = opt.state_tensors();
  ASSERT_EQ(ck.optimizer.size(), st.size());
  for (size_t i = 0; i < st.size(); ++i) {
    EXPECT_EQ(ck.optimizer[i].first, st[i].first);
    EXPECT_EQ(raw_bytes(ck.optimizer[i].second), raw_bytes(st[i].second));
  }
}

TEST(Checkpoint, ResumedTrainingContinuesBitIdentically) {
  TempDir run;
  TinyModel a(3);
  AdamW opt_a(a.params, AdamWConfig{0.9, 0.95, 1e-8, 0.1});
  for (int s = 0; s < 3; ++s) {
    set_grads(a.params, 200 + s);
    opt_a.step(3e-3);
  }
  const std::string dir = save_checkpoint(run.str(), sample_state(3), a.params, opt_a, 1);

  TinyModel b(99);  // different initial values, overwritten by the checkpoint
  AdamW opt_b(b.params, AdamWConfig{0.9, 0.95, 1e-8, 0.1});
  LoadedCheckpoint ck = load_checkpoint(resolve_resume("auto", run.str()));
  EXPECT_EQ(ck.dir, dir);
  copy_named_tensors(b.params, ck.model, "checkpoint model");
  opt_b.load_state(ck.optimizer, ck.state.optimizer_steps);
  EXPECT_EQ(opt_b.steps(), 3);

  for (int s = 3; s < 6; ++s) {
    set_grads(a.params, 200 + s);
    set_grads(b.params, 200 + s);
    opt_a.step(3e-3);
    opt_b.step(3e-3);
  }
  for (size_t i = 0; i < a.params.size(); ++i)
    EXPECT_EQ(raw_bytes(a.params[i].second), raw_bytes(b.params[i].second)) << a.params[i].first;
}

TEST(Checkpoint, KeepLastPrunesOlderOnes) {
  TempDir run;
  TinyModel m(4);
  AdamW opt(m.params, AdamWConfig{});
  for (int64_t s = 1; s <= 5; ++s) save_step(run.str(), s * 10, m, opt, 2);
  auto all = list_checkpoints(run.str());
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(fs::path(all[0]).filename(), "step_40");
  EXPECT_EQ(fs::path(all[1]).filename(), "step_50");
  // keep_last <= 0 keeps everything
  save_step(run.str(), 60, m, opt, 0);
  EXPECT_EQ(list_checkpoints(run.str()).size(), 3u);
  // nothing but step_N directories is left behind
  for (auto& e : fs::directory_iterator(run.path / "checkpoints"))
    EXPECT_EQ(e.path().filename().string().rfind("step_", 0), 0u) << e.path();
}

TEST(Checkpoint, ResavingAStepReplacesIt) {
  TempDir run;
  TinyModel m(5);
  AdamW opt(m.params, AdamWConfig{});
  save_step(run.str(), 10, m, opt, 0);
  const std::string dir = save_step(run.str(), 10, m, opt, 0);
  LoadedCheckpoint ck = load_checkpoint(dir);
  EXPECT_EQ(ck.state.optimizer_steps, 2);
  EXPECT_EQ(raw_bytes(ck.model[0].second), raw_bytes(m.params[0].second));
  EXPECT_EQ(list_checkpoints(run.str()).size(), 1u);
}

TEST(Checkpoint, CorruptedByteIsRefusedNamingTheFile) {
  TempDir run;
  TinyModel m(6);
  AdamW opt(m.params, AdamWConfig{});
  const std::string dir = save_step(run.str(), 1, m, opt, 0);
  flip_byte(dir + "/model.safetensors", 3);
  auto load = [&] { load_checkpoint(dir); };
  expect_error_contains(load, "checkpoint " + dir + " is corrupt");
  expect_error_contains(load, "model.safetensors does not match its checksum");
  expect_error_contains(load, "delete it or resume from an older one");
}

TEST(Checkpoint, TruncatedOrMissingFilesAreRefused) {
  TempDir run;
  TinyModel m(7);
  AdamW opt(m.params, AdamWConfig{});
  const std::string dir = save_step(run.str(), 1, m, opt, 0);
  const std::string opt_path = dir + "/optimizer.safetensors";
  std::string b = read_bytes(opt_path);
  write_bytes(opt_path, b.substr(0, b.size() - 10));
  expect_error_contains([&] { load_checkpoint(dir); }, "optimizer.safetensors has");
  expect_error_contains([&] { load_checkpoint(dir); }, "(truncated)");
  fs::remove(opt_path);
  expect_error_contains([&] { load_checkpoint(dir); }, "optimizer.safetensors is missing");
  fs::remove(dir + "/manifest.json");
  expect_error_contains([&] { load_checkpoint(dir); }, "manifest.json is missing");
  write_bytes(dir + "/manifest.json", "{\"format\": \"seqmix-checkpoint\", \"files\": ");
  expect_error_contains([&] { load_checkpoint(dir); }, "manifest.json cannot be read");
}

TEST(Checkpoint, LatestValidSkipsCorruptNewestAndLeftovers) {
  TempDir run;
  TinyModel m(8);
  AdamW opt(m.params, AdamWConfig{});
  EXPECT_FALSE(latest_valid_checkpoint(run.str()).has_value());
  save_step(run.str(), 1, m, opt, 0);
  const std::string second = save_step(run.str(), 2, m, opt, 0);
  const std::string third = save_step(run.str(), 3, m, opt, 0);
  flip_byte(third + "/optimizer.safetensors", 0);
  // leftovers of an interrupted save and a foreign directory are ignored
  fs::create_directories(run.path / "checkpoints" / ".tmp-step_4-999999999");
  write_bytes((run.path / "checkpoints" / ".tmp-step_4-999999999" / "model.safetensors").string(), "partial");
  fs::create_directories(run.path / "checkpoints" / "notes");
  EXPECT_EQ(list_checkpoints(run.str()).size(), 3u);

  ::testing::internal::CaptureStderr();
  auto latest = latest_valid_checkpoint(run.str());
  std::string err = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(*latest, second);
  EXPECT_NE(err.find("skipping checkpoint " + third), std::string::npos) << err;
  EXPECT_NE(err.find("optimizer.safetensors"), std::string::npos) << err;

  // a later save removes the leftover of the (dead) process
  save_step(run.str(), 5, m, opt, 0);
  EXPECT_FALSE(fs::exists(run.path / "checkpoints" / ".tmp-step_4-999999999"));
  EXPECT_TRUE(fs::exists(run.path / "checkpoints" / "notes"));
}

TEST(Checkpoint, ResolveResume) {
  TempDir run;
  TinyModel m(9);
  AdamW opt(m.params, AdamWConfig{});
  EXPECT_EQ(resolve_resume("auto", run.str()), "");
  EXPECT_EQ(resolve_resume("", run.str()), "");
  save_step(run.str(), 1, m, opt, 0);
  const std::string latest = save_step(run.str(), 2, m, opt, 0);
  const std::string first = (run.path / "checkpoints" / "step_1").string();
  EXPECT_EQ(resolve_resume("auto", run.str()), latest);
  EXPECT_EQ(resolve_resume(run.str(), "elsewhere"), latest);
  EXPECT_EQ(resolve_resume(first, run.str()), first);
  EXPECT_EQ(resolve_resume((run.path / "checkpoints").string(), "elsewhere"), latest);
  expect_error_contains([&] { resolve_resume(run.str("nope"), run.str()); }, "no such file or directory");
  TempDir other;
  expect_error_contains([&] { resolve_resume(other.str(), run.str()); }, "neither a run directory");
  fs::create_directories(other.path / "checkpoints");
  expect_error_contains([&] { resolve_resume(other.str(), run.str()); }, "has no valid checkpoint");
  EXPECT_EQ(resolve_resume("auto", other.str()), "");  // no checkpoint at all: start fresh
  // checkpoints that all fail verification: an error, never a silent fresh start
  fs::remove(fs::path(latest) / "manifest.json");
  fs::remove(fs::path(first) / "model.safetensors");
  ::testing::internal::CaptureStderr();
  expect_error_contains([&] { resolve_resume("auto", run.str()); }, "is corrupt or incomplete");
  ::testing::internal::GetCapturedStderr();
  expect_error_contains([&] { resolve_resume(latest, run.str()); }, "manifest.json is missing");
}

TEST(Checkpoint, BadExtraJsonIsRefusedBeforeWriting) {
  TempDir run;
  TinyModel m(10);
  AdamW opt(m.params, AdamWConfig{});
  TrainerState st = sample_state(4);
  st.extra_json = "{\"a\": ";
  expect_error_contains([&] { save_checkpoint(run.str(), st, m.params, opt, 0); }, "extra_json is not valid JSON");
  st.extra_json = "[1, 2]";
  expect_error_contains([&] { save_checkpoint(run.str(), st, m.params, opt, 0); }, "must be a JSON object");
  EXPECT_TRUE(list_checkpoints(run.str()).empty());
}

TEST(Checkpoint, CopyNamedTensorsChecksNamesAndShapes) {
  TinyModel a(11), b(12);
  copy_named_tensors(b.params, a.params, "src");
  EXPECT_EQ(raw_bytes(b.params[1].second), raw_bytes(a.params[1].second));
  NamedTensors missing(a.params.begin(), a.params.end() - 1);
  expect_error_contains([&] { copy_named_tensors(b.params, missing, "src"); }, "src has no tensor 'layers.0.norm.weight'");
  NamedTensors extra = a.params;
  extra.emplace_back("lm_head.weight", zeros({2}));
  expect_error_contains([&] { copy_named_tensors(b.params, extra, "src"); }, "'lm_head.weight' that the model does not have");
  NamedTensors shaped = a.params;
  shaped[0].second = zeros({3, 5});
  expect_error_contains([&] { copy_named_tensors(b.params, shaped, "src"); }, "has shape [3, 5]");
}

TEST(Checkpoint, TrainerStateJsonRoundTrip) {
  TrainerState st = sample_state(42);
  st.extra_json = "  {\"nested\": {\"s\": \"}{][\\\\\"}, \"n\": [1, 2, {\"x\": null}]}  ";
  TrainerState back = parse_trainer_state(trainer_state_json(st), "t");
  EXPECT_EQ(back.step, 42);
  EXPECT_EQ(back.rng_seed, st.rng_seed);
  EXPECT_EQ(back.extra_json, "{\"nested\": {\"s\": \"}{][\\\\\"}, \"n\": [1, 2, {\"x\": null}]}");
  expect_error_contains([] { parse_trainer_state("{\"format\": \"seqmix-trainer-state\"}", "ts.json"); },
                        "ts.json: missing \"step\"");
}

}  // namespace
}  // namespace seqmix::train
