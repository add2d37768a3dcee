#include "data/prepare.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "data/corpus.h"
#include "data/dataset.h"
#include "data/hash.h"
#include "data/json.h"
#include "data/shard.h"

namespace fs = std::filesystem;

namespace seqmix::data {

namespace {

constexpr int64_t kDefaultBpeVocab = 8192;

bool is_builtin(const std::string& s) { return s == "brown" || s == "kjv"; }

// A fingerprint of a path source's files (names, sizes, modification times), so a cached dataset made from
// it is re-made when the files change.
std::string source_fingerprint(const std::string& path) {
  std::vector<fs::path> files;
  if (fs::is_directory(path)) {
    for (const auto& e : fs::recursive_directory_iterator(path, fs::directory_options::follow_directory_symlink))
      if (e.is_regular_file()) files.push_back(e.path());
    std::sort(files.begin(), files.end());
  } else if (fs::exists(path)) {
    files.push_back(path);
  }
  std::string desc;
  for (const auto& f : files) {
    std::error_code ec;
    auto size = fs::file_size(f, ec);
    auto mtime = fs::last_write_time(f, ec).time_since_epoch().count();
    desc += f.string() + "\t" + std::to_string(size) + "\t" + std::to_string(mtime) + "\n";
  }
  return sha256_hex(desc).substr(0, 16);
}

void write_text_atomic(const fs::path& p, const std::string& text) {
  const fs::path tmp = p.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    SEQMIX_CHECK(f.good(), "cannot write ", tmp.string());
    f.write(text.data(), static_cast<std::streamsize>(text.size()));
    f.flush();
    SEQMIX_CHECK(f.good(), "writing ", tmp.string(), " failed (disk full?)");
  }
  fs::rename(tmp, p);
}

struct SplitResult {
  std::string name;
  uint64_t tokens = 0, bytes = 0, documents = 0;
  int64_t words = 0;
  std::vector<ShardEntry> shards;
};

// Encodes a split's documents (the tokenizer's end-of-text id between documents, when it has one) and
// writes shards of at most shard_tokens tokens.
SplitResult encode_split(const std::string& name, std::vector<std::string>& docs, const Tokenizer& tok,
                         const fs::path& dir, uint64_t shard_tokens) {
  SplitResult r;
  r.name = name;
  r.documents = docs.size();
  std::vector<int32_t> buf;
  auto flush = [&](bool final) {
    while (buf.size() >= shard_tokens || (final && (!buf.empty() || r.shards.empty()))) {
      const size_t n = std::min<size_t>(buf.size(), shard_tokens);
      char fname[64];
      std::snprintf(fname, sizeof(fname), "%s_%03zu.bin", name.c_str(), r.shards.size());
      write_shard((dir / fname).string(), std::span<const int32_t>(buf.data(), n), tok.vocab_size());
      r.shards.push_back({fname, n, sha256_file((dir / fname).string())});
      r.tokens += n;
      buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(n));
      if (final && buf.empty()) break;
    }
  };
  for (size_t i = 0; i < docs.size(); ++i) {
    if (i > 0 && tok.eot_id() >= 0) buf.push_back(tok.eot_id());
    tok.encode(docs[i], buf);
    r.bytes += docs[i].size();
    std::string().swap(docs[i]);
    if (buf.size() >= shard_tokens) flush(false);
  }
  flush(true);
  return r;
}

std::string shell_quote(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./-+=:") ==
                        std::string::npos)
    return s;
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out.push_back(c);
  }
  return out + "'";
}

}  // namespace

std::string data_cache_dir() {
  const char* env = std::getenv("SEQMIX_DATA_CACHE");
  return (env && *env) ? std::string(env) : std::string("data_cache");
}

std::string raw_data_dir() { return (fs::path(data_cache_dir()) / "raw").string(); }

std::string find_corpus_script() {
  std::vector<fs::path> candidates;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    fs::path d = exe.parent_path();
    for (int up = 0; up < 4 && !d.empty(); ++up, d = d.parent_path())
      candidates.push_back(d / "scripts" / "get_corpus.sh");
  }
  candidates.push_back(fs::current_path(ec) / "scripts" / "get_corpus.sh");
  for (const auto& c : candidates)
    if (fs::is_regular_file(c, ec)) return c.string();
  return "";
}

std::string ensure_raw_corpus(const std::string& name, const std::string& raw_dir, bool fetch) {
  const fs::path target = name == "brown" ? fs::path(raw_dir) / "brown" : fs::path(raw_dir) / "kjv" / "kjv.txt";
  auto present = [&] { return name == "brown" ? fs::is_directory(target) : fs::is_regular_file(target); };
  if (present()) return target.string();
  const std::string script = find_corpus_script();
  const std::string cmd = "bash " + (script.empty() ? std::string("scripts/get_corpus.sh") : shell_quote(script)) +
                          " " + name + " " + shell_quote(raw_dir);
  SEQMIX_CHECK(fetch && !script.empty(), "the ", name, " corpus is not in ", raw_dir,
               "; fetch it from the repository root with: ", cmd);
  std::fprintf(stderr, "seqmix: fetching the %s corpus: %s\n", name.c_str(), cmd.c_str());
  const int rc = std::system(cmd.c_str());
  SEQMIX_CHECK(rc == 0 && present(), "fetching the ", name, " corpus failed (", cmd, " exited with ", rc,
               "); run it by hand to see why");
  return target.string();
}

std::string prepare_dataset(const PrepareOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  SEQMIX_CHECK(!o.source.empty(), "prepare: no SOURCE given (brown, kjv, or a path)");
  SEQMIX_CHECK(!o.out.empty(), "prepare: no output directory given (--out DIR)");
  SEQMIX_CHECK(o.shard_tokens >= 1, "prepare: --shard-tokens must be >= 1");
  fs::path out = fs::path(o.out).lexically_normal();
  if (out.filename().empty()) out = out.parent_path();  // "dir/" -> "dir"
  if (fs::exists(out)) {
    SEQMIX_CHECK(o.force, "output directory ", o.out, " already exists; choose another --out or pass --force to ",
                 "replace it");
  }
  auto log = [&](const std::string& s) {
    if (!o.quiet) std::cout << s << std::endl;
  };

  // 1. Raw text and its splits.
  RawSplits raw;
  const std::string raw_dir = o.raw_dir.empty() ? raw_data_dir() : o.raw_dir;
  if (o.source == "brown") raw = read_brown(ensure_raw_corpus("brown", raw_dir, o.fetch));
  else if (o.source == "kjv") raw = read_kjv(ensure_raw_corpus("kjv", raw_dir, o.fetch));
  else raw = read_text_source(o.source, o.text_field);
  log("source: " + raw.detail);
  log("split: " + raw.split_rule);

  // 2. Tokenizer, from the training split only.
  std::unique_ptr<Tokenizer> tok;
  BpeTrainStats bpe_stats;
  int64_t asked_vocab = o.vocab_size;
  TokenizerKind kind = o.tokenizer;
  if (!o.tokenizer_file.empty()) {
    tok = load_tokenizer(o.tokenizer_file);
    kind = tok->kind();
    log("tokenizer: " + o.tokenizer_file);
  } else switch (o.tokenizer) {
    case TokenizerKind::Byte:
      if (o.vocab_size != 0 && o.vocab_size != 257)
        std::fprintf(stderr, "seqmix prepare: note: the byte tokenizer has 257 ids; --vocab-size %lld ignored\n",
                     static_cast<long long>(o.vocab_size));
      tok = make_byte_tokenizer();
      break;
    case TokenizerKind::Word:
      if (!raw.train_words.empty()) {
        std::unordered_map<std::string, int64_t> counts;
        for (const auto& w : raw.train_words) ++counts[w];
        tok = word_tokenizer_from_counts({counts.begin(), counts.end()}, o.min_count, o.vocab_size);
      } else {
        std::vector<std::string_view> texts(raw.train.begin(), raw.train.end());
        tok = train_word_tokenizer(texts, o.min_count, o.vocab_size);
      }
      break;
    case TokenizerKind::Bpe: {
      if (asked_vocab == 0) asked_vocab = kDefaultBpeVocab;
      SEQMIX_CHECK(asked_vocab >= 257 && asked_vocab < (int64_t(1) << 31), "--vocab-size ", asked_vocab,
                   " is out of range for bpe (at least 257 = 256 bytes + <|endoftext|>)");
      std::vector<std::string_view> texts(raw.train.begin(), raw.train.end());
      tok = train_bpe(texts, static_cast<int32_t>(asked_vocab), &bpe_stats);
      char line[200];
      std::snprintf(line, sizeof(line), "bpe: %d merges from %lld pre-tokens (%lld unique) in %.2f s",
                    bpe_stats.merges, static_cast<long long>(bpe_stats.pretokens),
                    static_cast<long long>(bpe_stats.unique_pretokens), bpe_stats.seconds);
      log(line);
      break;
    }
  }
  raw.train_words.clear();
  raw.train_words.shrink_to_fit();

  // 3. Shards, tokenizer and manifest into a temporary directory, then one rename.
  const fs::path parent = out.has_parent_path() ? out.parent_path() : fs::path(".");
  fs::create_directories(parent);
  const fs::path tmp = parent / (out.filename().string() + ".tmp-" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    std::vector<SplitResult> results;
    results.push_back(encode_split("train", raw.train, *tok, tmp, o.shard_tokens));
    results.push_back(encode_split("val", raw.val, *tok, tmp, o.shard_tokens));
    results.push_back(encode_split("test", raw.test, *tok, tmp, o.shard_tokens));
    for (int i = 0; i < 3; ++i) results[i].words = raw.words[i];
    tok->save((tmp / "tokenizer.json").string());

    std::string m = "{\n  \"format\": \"seqmix-dataset\",\n  \"version\": " + std::to_string(kManifestVersion) + ",\n";
    m += "  \"source\": " + json::quoted(o.source) + ",\n";
    m += "  \"source_detail\": " + json::quoted(raw.detail) + ",\n";
    if (!is_builtin(o.source)) m += "  \"source_fingerprint\": " + json::quoted(source_fingerprint(o.source)) + ",\n";
    m += "  \"split_rule\": " + json::quoted(raw.split_rule) + ",\n";
    m += "  \"tokenizer\": {\"kind\": " + json::quoted(kind_name(kind)) +
         ", \"file\": \"tokenizer.json\", \"vocab_size\": " + std::to_string(tok->vocab_size());
    if (!o.tokenizer_file.empty()) m += ", \"from_file\": " + json::quoted(o.tokenizer_file);
    else if (kind == TokenizerKind::Word) m += ", \"min_count\": " + std::to_string(o.min_count);
    else if (kind == TokenizerKind::Bpe)
      m += ", \"requested_vocab_size\": " + std::to_string(asked_vocab) + ", \"merges\": " +
           std::to_string(bpe_stats.merges);
    m += ", \"eot_id\": " + std::to_string(tok->eot_id()) + ", \"unk_id\": " + std::to_string(tok->unk_id());
    m += ", \"sha256\": " + json::quoted(sha256_file((tmp / "tokenizer.json").string())) + "},\n";
    m += "  \"token_dtype\": \"" + std::string(token_bytes_for_vocab(tok->vocab_size()) == 2 ? "u16" : "u32") +
         "\",\n  \"splits\": {";
    for (size_t i = 0; i < results.size(); ++i) {
      const auto& r = results[i];
      m += (i ? ",\n    " : "\n    ") + json::quoted(r.name) + ": {\"tokens\": " + std::to_string(r.tokens) +
           ", \"bytes\": " + std::to_string(r.bytes) + ", \"documents\": " + std::to_string(r.documents);
      if (r.words) m += ", \"words\": " + std::to_string(r.words);
      m += ", \"shards\": [";
      for (size_t k = 0; k < r.shards.size(); ++k)
        m += std::string(k ? ", " : "") + "{\"file\": " + json::quoted(r.shards[k].file) +
             ", \"tokens\": " + std::to_string(r.shards[k].tokens) + ", \"sha256\": " +
             json::quoted(r.shards[k].sha256) + "}";
      m += "]}";
    }
    m += "\n  }\n}\n";
    write_text_atomic(tmp / "manifest.json", m);

    if (fs::exists(out)) fs::remove_all(out);
    std::error_code ec;
    fs::rename(tmp, out, ec);
    if (ec && fs::exists(out / "manifest.json")) {
      fs::remove_all(tmp);  // another process finished the same dataset first
    } else {
      SEQMIX_CHECK(!ec, "cannot rename ", tmp.string(), " to ", o.out, ": ", ec.message());
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::ostringstream s;
    s << "tokenizer: " << kind_name(kind) << ", vocab_size " << tok->vocab_size() << "\n";
    for (const auto& r : results)
      s << r.name << ": " << r.tokens << " tokens from " << r.bytes << " bytes"
        << (r.words ? " (" + std::to_string(r.words) + " words)" : std::string()) << ", " << r.shards.size()
        << " shard(s)\n";
    s << "wrote " << o.out << " in " << secs << " s";
    log(s.str());
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  return o.out;
}

int prepare_main(const std::vector<std::string>& args) {
  const char* usage =
      "usage: seqmix prepare SOURCE --tokenizer byte|word|bpe [--vocab-size N] [--min-count N] --out DIR\n"
      "                      [--tokenizer-file PATH] [--raw-dir DIR] [--text-field NAME] [--shard-tokens N] [--force] [--no-fetch] [--quiet]\n"
      "  SOURCE: brown | kjv | a UTF-8 text file | a directory of files | a .jsonl file (see docs/DATA.md)\n";
  try {
    PrepareOptions o;
    bool have_tok = false;
    for (size_t i = 0; i < args.size(); ++i) {
      const std::string& a = args[i];
      auto value = [&]() -> std::string {
        SEQMIX_CHECK(i + 1 < args.size(), "prepare: ", a, " needs a value\n", usage);
        return args[++i];
      };
      auto integer = [&](const std::string& v) -> int64_t {
        try {
          size_t pos = 0;
          long long x = std::stoll(v, &pos);
          if (pos == v.size()) return x;
        } catch (...) {
        }
        SEQMIX_FAIL("prepare: ", a, " needs an integer, got \"", v, "\"");
      };
      if (a == "-h" || a == "--help") {
        std::cout << usage;
        return 0;
      } else if (a == "--tokenizer") {
        o.tokenizer = parse_tokenizer_kind(value());
        have_tok = true;
      } else if (a == "--tokenizer-file") {
        o.tokenizer_file = value();
        have_tok = true;
      } else if (a == "--vocab-size") {
        o.vocab_size = integer(value());
      } else if (a == "--min-count") {
        o.min_count = integer(value());
      } else if (a == "--out") {
        o.out = value();
      } else if (a == "--raw-dir") {
        o.raw_dir = value();
      } else if (a == "--text-field") {
        o.text_field = value();
      } else if (a == "--shard-tokens") {
        o.shard_tokens = static_cast<uint64_t>(integer(value()));
      } else if (a == "--force") {
        o.force = true;
      } else if (a == "--no-fetch") {
        o.fetch = false;
      } else if (a == "--quiet") {
        o.quiet = true;
      } else if (!a.empty() && a[0] == '-') {
        SEQMIX_FAIL("prepare: unknown option ", a, "\n", usage);
      } else {
        SEQMIX_CHECK(o.source.empty(), "prepare: more than one SOURCE (", o.source, ", ", a, ")\n", usage);
        o.source = a;
      }
    }
    SEQMIX_CHECK(!o.source.empty(), "prepare: no SOURCE given\n", usage);
    SEQMIX_CHECK(have_tok, "prepare: --tokenizer byte|word|bpe (or --tokenizer-file PATH) is required\n", usage);
    SEQMIX_CHECK(!o.out.empty(), "prepare: --out DIR is required\n", usage);
    prepare_dataset(o);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "seqmix prepare: error: " << e.what() << std::endl;
    return 1;
  }
}

std::string ensure_dataset(const std::string& source, const std::string& tokenizer, int64_t vocab_size,
                           int64_t min_count) {
  const TokenizerKind kind = parse_tokenizer_kind(tokenizer);
  if (kind == TokenizerKind::Bpe && vocab_size == 0) vocab_size = kDefaultBpeVocab;
  if (kind == TokenizerKind::Byte) vocab_size = 0;
  std::string name;
  if (is_builtin(source)) {
    name = source;
  } else {
    SEQMIX_CHECK(fs::exists(source), "data.source ", source,
                 " not found; use brown, kjv, or the path of a text file, directory or JSONL file");
    std::error_code ec;
    const fs::path abs = fs::weakly_canonical(source, ec);
    std::string stem = fs::path(source).filename().string();
    if (stem.empty()) stem = fs::path(source).parent_path().filename().string();
    name = stem + "-" + sha256_hex(abs.string()).substr(0, 8);
  }
  name += std::string("-") + kind_name(kind);
  if (vocab_size > 0) name += "-" + std::to_string(vocab_size);
  if (kind == TokenizerKind::Word && min_count != 4) name += "-min" + std::to_string(min_count);
  const fs::path dir = fs::path(data_cache_dir()) / name;
  if (fs::exists(dir / "manifest.json")) {
    bool fresh = true;
    if (!is_builtin(source)) {
      const Dataset d = Dataset::open(dir.string());
      const std::string want = source_fingerprint(source);
      fresh = d.manifest_text().find("\"source_fingerprint\": \"" + want + "\"") != std::string::npos;
      if (!fresh) std::fprintf(stderr, "seqmix: %s changed since %s was prepared; preparing it again\n",
                               source.c_str(), dir.string().c_str());
    }
    if (fresh) return dir.string();
  }
  PrepareOptions o;
  o.source = source;
  o.tokenizer = kind;
  o.vocab_size = vocab_size;
  o.min_count = min_count;
  o.out = dir.string();
  o.force = true;
  std::fprintf(stderr, "seqmix: preparing %s with the %s tokenizer into %s\n", source.c_str(), kind_name(kind),
               dir.string().c_str());
  return prepare_dataset(o);
}

}  // namespace seqmix::data
