#include "data/dataset.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "data/hash.h"
#include "data/json.h"

namespace fs = std::filesystem;

namespace seqmix::data {

Dataset Dataset::open(const std::string& dir) {
  const fs::path mpath = fs::path(dir) / "manifest.json";
  SEQMIX_CHECK(fs::is_directory(dir), "dataset directory ", dir,
               " not found; make one with `seqmix prepare SOURCE --tokenizer byte|word|bpe --out ", dir, "`");
  std::ifstream f(mpath, std::ios::binary);
  SEQMIX_CHECK(f.good(), "dataset directory ", dir, " has no manifest.json: it is not a prepared dataset or its ",
               "preparation did not finish; delete it and run `seqmix prepare` again");
  std::stringstream ss;
  ss << f.rdbuf();
  Dataset d;
  d.dir_ = dir;
  d.manifest_text_ = ss.str();
  const std::string what = mpath.string();
  const json::Value m = json::parse(d.manifest_text_, what);
  SEQMIX_CHECK(m.at("format", what).str == "seqmix-dataset", what, " is not a seqmix dataset manifest");
  const double version = m.at("version", what).num;
  SEQMIX_CHECK(version >= 1 && version <= kManifestVersion, what, " has version ", version,
               "; this seqmix reads up to ", kManifestVersion, ": update seqmix or re-run `seqmix prepare`");
  d.source_ = m.at("source", what).str;
  const json::Value& tok = m.at("tokenizer", what);
  d.tokenizer_kind_ = tok.at("kind", what).str;
  d.tokenizer_file_ = tok.at("file", what).str;
  d.tokenizer_sha256_ = tok.at("sha256", what).str;
  d.vocab_size_ = static_cast<int64_t>(tok.at("vocab_size", what).num);
  const json::Value& splits = m.at("splits", what);
  SEQMIX_CHECK(splits.is_object(), what, ": \"splits\" must be an object");
  for (const auto& [name, s] : splits.obj) {
    SplitEntry e;
    e.name = name;
    e.tokens = static_cast<uint64_t>(s.at("tokens", what).num);
    if (const auto* b = s.find("bytes")) e.bytes = static_cast<uint64_t>(b->num);
    if (const auto* b = s.find("documents")) e.documents = static_cast<uint64_t>(b->num);
    if (const auto* b = s.find("words")) e.words = static_cast<int64_t>(b->num);
    for (const auto& sh : s.at("shards", what).arr)
      e.shards.push_back({sh.at("file", what).str, static_cast<uint64_t>(sh.at("tokens", what).num),
                          sh.at("sha256", what).str});
    d.splits_.push_back(std::move(e));
  }
  return d;
}

const SplitEntry& Dataset::split_entry(const std::string& name) const {
  for (const auto& s : splits_)
    if (s.name == name) return s;
  SEQMIX_FAIL("dataset ", dir_, " has no split \"", name, "\" (it has train, val, test)");
}

std::shared_ptr<TokenSplit> Dataset::split(const std::string& name) const {
  const SplitEntry& e = split_entry(name);
  std::vector<std::string> paths;
  for (const auto& sh : e.shards) paths.push_back((fs::path(dir_) / sh.file).string());
  auto s = std::make_shared<TokenSplit>(paths);
  SEQMIX_CHECK(s->size() == e.tokens, "dataset ", dir_, ": split ", name, " has ", s->size(),
               " tokens in its shards but the manifest says ", e.tokens, "; re-run `seqmix prepare`");
  SEQMIX_CHECK(s->vocab_size() == vocab_size_, "dataset ", dir_, ": split ", name, " shards have vocabulary ",
               s->vocab_size(), " but the manifest says ", vocab_size_, "; re-run `seqmix prepare`");
  return s;
}

std::unique_ptr<Tokenizer> Dataset::tokenizer() const {
  return load_tokenizer((fs::path(dir_) / tokenizer_file_).string());
}

void Dataset::verify_checksums() const {
  auto check = [&](const std::string& file, const std::string& want) {
    const std::string p = (fs::path(dir_) / file).string();
    const std::string got = sha256_file(p);
    SEQMIX_CHECK(got == want, "dataset file ", p, " does not match its SHA-256 in manifest.json (corrupt or ",
                 "modified); delete ", dir_, " and run `seqmix prepare` again");
  };
  check(tokenizer_file_, tokenizer_sha256_);
  for (const auto& s : splits_)
    for (const auto& sh : s.shards) check(sh.file, sh.sha256);
}

}  // namespace seqmix::data
