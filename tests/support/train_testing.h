// Shared by the trainer tests: per-process scratch directories and a small byte-level dataset made
// from repetitive text a model learns quickly.
#pragma once
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "data/prepare.h"

namespace seqmix::testing {

// <tmp>/<prefix>_<pid>/<name>, emptied.
inline std::filesystem::path scratch_dir(const std::string& prefix, const std::string& name) {
  std::filesystem::path p = std::filesystem::temp_directory_path() / (prefix + "_" + std::to_string(::getpid())) / name;
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

// `sentences` short sentences under `root`, prepared with the byte tokenizer; returns the dataset dir.
inline std::string make_tiny_byte_dataset(const std::filesystem::path& root, int sentences) {
  {
    std::ofstream out(root / "text.txt");
    const char* lines[] = {"the cat sat on the mat. ", "a dog ran in the park. ", "the sun is warm today. "};
    for (int i = 0; i < sentences; ++i) out << lines[(i * 7) % 3] << (i % 5 == 0 ? "\n" : "");
  }
  data::PrepareOptions opt;
  opt.source = (root / "text.txt").string();
  opt.tokenizer = data::TokenizerKind::Byte;
  opt.out = (root / "prepared").string();
  opt.quiet = true;
  return data::prepare_dataset(opt);
}

}  // namespace seqmix::testing
