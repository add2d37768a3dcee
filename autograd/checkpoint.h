// Recompute (activation checkpointing): run a block's forward without saving its intermediates and
// re-run it during backward. Gradients equal those of the plain forward; random draws inside the
// block (dropout) replay exactly because the generator is rewound for the recompute.
#pragma once
#include <functional>

#include "autograd/node.h"
#include "core/random.h"

namespace seqmix::autograd {

// `fn` must be deterministic given its inputs and the generator state. Parameters used inside `fn`
// receive their gradients (and fire their grad-ready hooks) during the recompute.
Tensors checkpoint(const std::function<Tensors(const Tensors&)>& fn, const Tensors& inputs,
                   Generator* gen = &default_generator());

}  // namespace seqmix::autograd
