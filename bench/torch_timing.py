"""Timing shared by the PyTorch peer scripts in bench/ (imported as `from torch_timing import median_ms`:
the scripts run from their own folder, which Python puts on sys.path)."""
import statistics

import torch


def median_ms(fn, warmup, iters):
    """Median of `iters` runs of fn, each between its own pair of CUDA events, after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, stop in events:
        start.record()
        fn()
        stop.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(stop) for start, stop in events)
