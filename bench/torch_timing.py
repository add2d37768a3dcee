"""Timing and options shared by the PyTorch peer scripts in bench/ (imported as `from torch_timing import
median_ms`: the scripts run from their own folder, which Python puts on sys.path)."""
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


def add_shape_args(ap):
    """The options of the chunked-recurrence peers (torch_recurrence.py, torch_delta.py), as seqmix_bench's:
    --B --T --H --D, --long (the long length of the scaling table), --iters --warmup, --no-long, --compile."""
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--long", type=int, default=65536)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-long", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the chunked function")
