#include "layers/mixers/gated_deltanet/gated_deltanet.h"

namespace seqmix::mixers {

DeltaNetConfig gated_deltanet_defaults() {
  DeltaNetConfig cfg;
  cfg.gated = true;
  cfg.output_gate = true;
  cfg.conv_size = 4;
  return cfg;
}

void register_gated_deltanet_mixer() {
  register_mixer("gated_deltanet", [](const MixerContext& ctx, const ConfigNode& c) -> std::shared_ptr<Mixer> {
    return std::make_shared<DeltaNet>(ctx, read_deltanet_config(c, gated_deltanet_defaults()));
  });
}

}  // namespace seqmix::mixers
