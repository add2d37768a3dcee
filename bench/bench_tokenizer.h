// Tokenizer benchmark: BPE training time and encode/decode throughput on one core.
#pragma once
#include <string>
#include <vector>

namespace seqmix::bench {

// seqmix bench tokenizer [--text FILE] [--mb N] [--merges N] [--repeat N] [--raw-dir DIR]
//   --text FILE  text to use (default: the King James Bible then the Brown words from the raw-data
//                directory, fetched with scripts/get_corpus.sh if missing), cut to --mb MiB (default 10)
//   --merges N   BPE merges to learn (default 8192)
//   --repeat N   encode timings: best of N runs (default 3)
// Prints one JSON object per measurement, then a table. Returns 0, or 1 with a message on stderr.
int tokenizer_main(const std::vector<std::string>& args);

}  // namespace seqmix::bench
