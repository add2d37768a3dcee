#include "bench/bench_tokenizer.h"

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "core/error.h"
#include "data/corpus.h"
#include "data/prepare.h"
#include "data/tokenizer.h"

namespace seqmix::bench {

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <typename F>
double best_of(int n, F&& f) {
  double best = 1e300;
  for (int i = 0; i < n; ++i) {
    const double t0 = now_s();
    f();
    best = std::min(best, now_s() - t0);
  }
  return best;
}

}  // namespace

int tokenizer_main(const std::vector<std::string>& args) {
  try {
    std::string text_file, raw_dir = data::raw_data_dir();
    double mb = 10;
    int merges = 8192, repeat = 3;
    for (size_t i = 0; i < args.size(); ++i) {
      auto value = [&]() -> std::string {
        SEQMIX_CHECK(i + 1 < args.size(), "bench tokenizer: ", args[i], " needs a value");
        return args[++i];
      };
      if (args[i] == "--text") text_file = value();
      else if (args[i] == "--mb") mb = std::stod(value());
      else if (args[i] == "--merges") merges = std::stoi(value());
      else if (args[i] == "--repeat") repeat = std::stoi(value());
      else if (args[i] == "--raw-dir") raw_dir = value();
      else SEQMIX_FAIL("bench tokenizer: unknown option ", args[i],
                       " (options: --text FILE --mb N --merges N --repeat N --raw-dir DIR)");
    }
    std::string text, what;
    if (!text_file.empty()) {
      std::ifstream f(text_file, std::ios::binary);
      SEQMIX_CHECK(f.good(), "bench tokenizer: cannot read ", text_file);
      std::stringstream ss;
      ss << f.rdbuf();
      text = ss.str();
      what = text_file;
    } else {
      auto kjv = data::read_kjv(data::ensure_raw_corpus("kjv", raw_dir, true));
      for (auto* v : {&kjv.train, &kjv.val, &kjv.test})
        for (auto& d : *v) text += d;
      auto brown = data::read_brown(data::ensure_raw_corpus("brown", raw_dir, true));
      for (auto* v : {&brown.train, &brown.val, &brown.test})
        for (auto& d : *v) text += d + "\n";
      what = "kjv + brown";
    }
    const size_t want = static_cast<size_t>(mb * 1024 * 1024);
    SEQMIX_CHECK(!text.empty(), "bench tokenizer: empty text");
    while (text.size() < want) text += text.substr(0, want - text.size());
    text.resize(want);
    const double mib = text.size() / (1024.0 * 1024.0);
    std::vector<std::string_view> texts{text};

    auto line = [](const std::string& name, double seconds, double mib_s, const std::string& extra) {
      std::printf("{\"bench\": \"tokenizer\", \"case\": \"%s\", \"seconds\": %.4f, \"mib_per_s\": %.2f%s}\n",
                  name.c_str(), seconds, mib_s, extra.c_str());
      std::fflush(stdout);
    };

    data::BpeTrainStats st;
    const double t0 = now_s();
    auto bpe = data::train_bpe(texts, 257 + merges, &st);
    const double train_s = now_s() - t0;
    line("bpe_train", train_s, mib / train_s,
         ", \"merges\": " + std::to_string(st.merges) + ", \"pretokens\": " + std::to_string(st.pretokens) +
             ", \"unique_pretokens\": " + std::to_string(st.unique_pretokens) + ", \"mib\": " + std::to_string(mib));

    std::vector<int32_t> ids;
    const double enc_s = best_of(repeat, [&] {
      ids.clear();
      bpe->encode(text, ids);
    });
    line("bpe_encode", enc_s, mib / enc_s,
         ", \"tokens\": " + std::to_string(ids.size()) + ", \"bytes_per_token\": " +
             std::to_string(static_cast<double>(text.size()) / ids.size()));
    std::string back;
    const double dec_s = best_of(repeat, [&] { back = bpe->decode(ids); });
    SEQMIX_CHECK(back == text, "bench tokenizer: BPE decode(encode(text)) != text");
    line("bpe_decode", dec_s, mib / dec_s, "");

    auto byte = data::make_byte_tokenizer();
    const double byte_s = best_of(repeat, [&] {
      ids.clear();
      byte->encode(text, ids);
    });
    line("byte_encode", byte_s, mib / byte_s, "");

    auto word = data::train_word_tokenizer(texts, 4);
    const double word_s = best_of(repeat, [&] {
      ids.clear();
      word->encode(text, ids);
    });
    line("word_encode", word_s, mib / word_s, ", \"vocab\": " + std::to_string(word->vocab_size()));

    std::printf("\ntokenizer benchmark on %.1f MiB of %s (one thread)\n", mib, what.c_str());
    std::printf("  %-28s %10.2f s\n", ("bpe train, " + std::to_string(st.merges) + " merges").c_str(), train_s);
    std::printf("  %-28s %10.1f MiB/s\n", "bpe encode", mib / enc_s);
    std::printf("  %-28s %10.1f MiB/s\n", "bpe decode", mib / dec_s);
    std::printf("  %-28s %10.1f MiB/s\n", "byte encode", mib / byte_s);
    std::printf("  %-28s %10.1f MiB/s\n", "word encode", mib / word_s);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "seqmix bench tokenizer: error: " << e.what() << std::endl;
    return 1;
  }
}

}  // namespace seqmix::bench
