// The seqmix command-line entry point: one binary, one subcommand per task.
#include <cstdio>
#include <filesystem>
#include <string>
#include <unistd.h>
#include <vector>

#include "core/error.h"
#include "data/prepare.h"
#include "train/cli.h"

namespace {
const char* kUsage =
    "usage: seqmix <command> [options]\n"
    "  prepare  SOURCE --tokenizer byte|word|bpe [--vocab-size N] --out DIR   prepare a dataset\n"
    "  train    CONFIG.yaml [--set key.path=value ...] [--resume auto|DIR] [--device cpu|cuda]\n"
    "  eval     RUN_OR_CHECKPOINT [--split val|test]\n"
    "  generate RUN_OR_CHECKPOINT --prompt TEXT [--max-new-tokens N --temperature T --top-k K --top-p P --seed S]\n"
    "  info     CONFIG.yaml        parameters, FLOPs per token, state bytes per sequence\n"
    "  bench    ...                kernel / step benchmarks (runs seqmix_bench)\n"
    "Run `seqmix <command> --help` for a command's options.\n";
}

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help") {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  std::string cmd = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  try {
    if (cmd == "prepare") return seqmix::data::prepare_main(args);
    if (cmd == "train") return seqmix::cli::train_main(args);
    if (cmd == "eval") return seqmix::cli::eval_main(args);
    if (cmd == "generate") return seqmix::cli::generate_main(args);
    if (cmd == "info") return seqmix::cli::info_main(args);
    if (cmd == "bench") {
      std::string bench = (std::filesystem::path(argv[0]).parent_path() / "seqmix_bench").string();
      std::vector<char*> bargv{bench.data()};
      for (int i = 2; i < argc; ++i) bargv.push_back(argv[i]);
      bargv.push_back(nullptr);
      execv(bench.c_str(), bargv.data());
      std::fprintf(stderr, "seqmix: could not run %s (build the seqmix_bench target)\n", bench.c_str());
      return 1;
    }
    std::fprintf(stderr, "seqmix: unknown command '%s'\n%s", cmd.c_str(), kUsage);
    return 2;
  } catch (const seqmix::Error& e) {
    std::fprintf(stderr, "\nseqmix %s: error: %s\n", cmd.c_str(), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\nseqmix %s: error: %s\n", cmd.c_str(), e.what());
    return 1;
  }
}
