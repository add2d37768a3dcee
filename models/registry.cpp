// The built-in mixers. Adding a mixer: one line here calling its register function.
#include "layers/mixers/attention/attention.h"
#include "layers/mixers/linear_attention/linear_attention.h"
#include "layers/mixers/retnet/retnet.h"
#include "layers/mixers/gla/gla.h"
#include "layers/mixers/hgrn2/hgrn2.h"
#include "layers/mixers/rwkv6/rwkv6.h"
#include "layers/mixers/mlstm/mlstm.h"
#include "layers/mixers/deltanet/deltanet.h"
#include "layers/mixers/gated_deltanet/gated_deltanet.h"
#include "layers/mixers/rwkv7/rwkv7.h"
#include "models/lm.h"

namespace seqmix {

namespace {
void register_all() {
  mixers::register_attention_mixer();
  mixers::register_linear_attention_mixer();
  mixers::register_retnet_mixer();
  mixers::register_gla_mixer();
  mixers::register_hgrn2_mixer();
  mixers::register_rwkv6_mixer();
  mixers::register_mlstm_mixer();
  mixers::register_deltanet_mixer();
  mixers::register_gated_deltanet_mixer();
  mixers::register_rwkv7_mixer();
}
}  // namespace

// Once per process, thread-safe: the in-process data-parallel ranks (threads) build their models at the same
// time, and a plain "done" flag let a second thread see it set and look up a mixer while the first was still
// filling the registry (a crash at start-up, seen once in CI).
void register_builtin_mixers() {
  static const bool registered = [] {
    register_all();
    return true;
  }();
  (void)registered;
}

}  // namespace seqmix
