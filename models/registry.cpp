// The built-in mixers. Adding a mixer: one line here calling its register function.
#include "layers/mixers/attention/attention.h"
#include "models/lm.h"

namespace seqmix {

void register_builtin_mixers() {
  static bool done = false;
  if (done) return;
  done = true;
  mixers::register_attention_mixer();
}

}  // namespace seqmix
