// The `gated_deltanet` mixer (Yang et al. 2025, "Gated Delta Networks: Improving Mamba2 with Delta Rule"):
//   S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T, a_t = exp(g_t) a data-dependent decay per head,
// with short causal convolutions on q, k, v and the output gate o * SiLU(x W_g) after a per-head RMSNorm.
// It is the DeltaNet module (layers/mixers/deltanet) with `gated` and `output_gate` on; see deltanet.h.
#pragma once
#include "layers/mixers/deltanet/deltanet.h"

namespace seqmix::mixers {

// Defaults of the gated_deltanet block (gated, output gate, conv 4).
DeltaNetConfig gated_deltanet_defaults();
void register_gated_deltanet_mixer();

}  // namespace seqmix::mixers
