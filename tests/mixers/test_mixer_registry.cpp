// The built-in mixer registry under concurrent first use: the in-process data-parallel ranks are threads that
// register the built-in mixers and look one up at the same moment (models/registry.cpp).
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "layers/mixers/mixer.h"
#include "models/lm.h"

using namespace seqmix;

TEST(MixerRegistry, ConcurrentFirstUseSeesEveryMixer) {
  constexpr int kThreads = 8;
  std::atomic<int> ready{0}, complete{0};
  std::vector<std::thread> ts;
  for (int i = 0; i < kThreads; ++i)
    ts.emplace_back([&] {
      ready.fetch_add(1);
      while (ready.load() < kThreads) std::this_thread::yield();  // all start together
      register_builtin_mixers();
      // each thread sees the whole list as soon as the call returns (the last one registered included)
      complete.fetch_add(mixer_registered("attention") && mixer_registered("rwkv7") ? 1 : 0);
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(complete.load(), kThreads);
}
