#include "layers/mixers/mixer.h"

#include <map>

namespace seqmix {

namespace {
std::map<std::string, MixerFactory>& registry() {
  static std::map<std::string, MixerFactory> r;
  return r;
}
}  // namespace

void register_mixer(const std::string& name, MixerFactory factory) { registry()[name] = std::move(factory); }
bool mixer_registered(const std::string& name) { return registry().count(name) > 0; }

std::vector<std::string> mixer_names() {
  std::vector<std::string> out;
  for (auto& [n, f] : registry()) out.push_back(n);
  return out;
}

std::shared_ptr<Mixer> make_mixer(const std::string& name, const MixerContext& ctx, const ConfigNode& cfg) {
  auto it = registry().find(name);
  if (it == registry().end()) {
    std::string known;
    for (auto& n : mixer_names()) known += (known.empty() ? "" : ", ") + n;
    SEQMIX_FAIL("unknown mixer '", name, "': known mixers are ", known);
  }
  return it->second(ctx, cfg);
}

}  // namespace seqmix
