#!/usr/bin/env python3
"""The memory-bound kernels of `seqmix_bench kernels`, measured in PyTorch on the same GPU.

Same sizes, same byte counts, same timing method (CUDA events around K launches after a warm-up,
median of R repetitions), same output: one JSON object per measurement, then the same table.

    python3 bench/torch_kernels.py [--n 67108864] [--reps 20] [--inner 5] [--dtype all|f32|bf16]
                                   [--only copy,add,...]
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def time_gpu_us(fn, reps, inner):
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start.record()
        for _ in range(inner):
            fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e3 / inner)
    return statistics.median(times)


def rms_norm(x, w, eps):
    if hasattr(F, "rms_norm"):
        return F.rms_norm(x, (x.shape[-1],), w, eps)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1 << 26)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--inner", type=int, default=5)
    ap.add_argument("--dtype", default="all", choices=["all", "f32", "bf16"])
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("torch_kernels: no CUDA device", file=sys.stderr)
        return 1
    only = set(s for s in args.only.split(",") if s)
    want = lambda name: not only or name in only
    dev = torch.device("cuda")
    device_name = torch.cuda.get_device_name(0)
    dtypes = {"all": [("bf16", torch.bfloat16), ("f32", torch.float32)], "f32": [("f32", torch.float32)],
              "bf16": [("bf16", torch.bfloat16)]}[args.dtype]
    print(f"torch {torch.__version__} on {device_name}: n = {args.n}, median of {args.reps} x {args.inner} launches",
          file=sys.stderr)
    rows = []

    def emit(row):
        out = {"bench": "torch_kernels", **row, "device": device_name}
        print(json.dumps(out), flush=True)
        rows.append(row)

    def measure(name, dtname, elements, nbytes, copy_gbps, fn):
        row = {"name": name, "dtype": dtname, "elements": elements}
        try:
            t = time_gpu_us(fn, args.reps, args.inner)
            gbps = nbytes / (t * 1e3)
            row.update(time_us=t, gbps=gbps, frac_copy=gbps / copy_gbps if copy_gbps else 1.0)
        except Exception as e:  # report, keep going
            row.update(time_us=0.0, note=f"failed: {e}")
        emit(row)
        return row.get("gbps", 0.0)

    n = args.n
    for dtname, dt in dtypes:
        es = torch.tensor([], dtype=dt).element_size()
        nb = n * es
        D = 4096
        rows_n = max(n // D, 1)
        src = torch.empty(n, device=dev, dtype=dt).uniform_(-1, 1)
        dst = torch.empty_like(src)
        copy_gbps = measure("copy", dtname, n, 2 * nb, 0, lambda: dst.copy_(src))
        del src, dst
        if want("add"):
            a = torch.empty(n, device=dev, dtype=dt).uniform_(-1, 1)
            b = torch.empty(n, device=dev, dtype=dt).uniform_(-1, 1)
            measure("add", dtname, n, 3 * nb, copy_gbps, lambda: a + b)
            del a, b
        if want("gelu_fwd") or want("gelu_bwd"):
            x = torch.empty(n, device=dev, dtype=dt).uniform_(-3, 3)
            g = torch.empty(n, device=dev, dtype=dt).uniform_(-1, 1)
            if want("gelu_fwd"):
                measure("gelu fwd", dtname, n, 2 * nb, copy_gbps, lambda: F.gelu(x, approximate="tanh"))
            if want("gelu_bwd"):
                # the fused backward kernel: reads g and x, writes dx (as seqmix's fast path)
                measure("gelu bwd", dtname, n, 3 * nb, copy_gbps,
                        lambda: torch.ops.aten.gelu_backward(g, x, approximate="tanh"))
            del x, g
        if want("softmax_fwd"):
            x = torch.empty(rows_n, D, device=dev, dtype=dt).uniform_(-4, 4)
            measure("softmax fwd D=4096", dtname, rows_n * D, 2 * rows_n * D * es, copy_gbps,
                    lambda: torch.softmax(x, -1))
            del x
        if want("rmsnorm_fwd") or want("rmsnorm_bwd"):
            x = torch.empty(rows_n, D, device=dev, dtype=dt).uniform_(-2, 2)
            w = torch.empty(D, device=dev, dtype=dt).uniform_(0.5, 1.5)
            g = torch.empty(rows_n, D, device=dev, dtype=dt).uniform_(-1, 1)
            xb = rows_n * D * es
            if want("rmsnorm_fwd"):
                measure("rmsnorm fwd D=4096", dtname, rows_n * D, 2 * xb, copy_gbps, lambda: rms_norm(x, w, 1e-6))
            if want("rmsnorm_bwd"):
                xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
                y = rms_norm(xr, wr, 1e-6)
                measure("rmsnorm bwd D=4096", dtname, rows_n * D, 3 * xb, copy_gbps,
                        lambda: torch.autograd.grad(y, (xr, wr), g, retain_graph=True))
                del xr, wr, y
            del x, w, g
        if want("ce_fwd") or want("ce_bwd"):
            N, V = 8192, 50304
            logits = torch.empty(N, V, device=dev, dtype=dt).uniform_(-4, 4)
            targets = torch.randint(0, V, (N,), device=dev)
            lb = N * V * es
            if want("ce_fwd"):
                measure("cross-entropy fwd V=50304", dtname, N * V, lb, copy_gbps,
                        lambda: F.cross_entropy(logits, targets))
            if want("ce_bwd"):
                lr = logits.clone().requires_grad_()
                loss = F.cross_entropy(lr, targets)
                measure("cross-entropy bwd V=50304", dtname, N * V, 2 * lb, copy_gbps,
                        lambda: torch.autograd.grad(loss, lr, retain_graph=True))
                del lr, loss
            del logits, targets
        torch.cuda.synchronize()
        torch.cuda.empty_cache()

    if want("launch"):
        a = torch.ones(1000, device=dev)
        b = torch.ones(1000, device=dev)
        for _ in range(100):
            a + b
        torch.cuda.synchronize()
        issue, total = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(1000):
                a + b
            t1 = time.perf_counter()
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            issue.append((t1 - t0) * 1e6 / 1000)
            total.append((t2 - t0) * 1e6 / 1000)
        emit({"name": "launch tiny add (ops)", "dtype": "f32", "elements": 1000, "time_us": statistics.median(issue),
              "note": "host time per launch of a + b x1000, async"})
        emit({"name": "launch tiny add + sync (ops)", "dtype": "f32", "elements": 1000,
              "time_us": statistics.median(total), "note": "per launch, including the final synchronize"})

    if want("autograd"):
        x = torch.full((16,), 0.5, device=dev, requires_grad=True)
        c = torch.full((16,), 0.999, device=dev)
        build, back = [], []
        for r in range(7):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            y = x
            for _ in range(500):
                y = y * c + x
            loss = y.sum()
            t1 = time.perf_counter()
            loss.backward()
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            x.grad = None
            if r >= 2:
                build.append((t1 - t0) * 1e6 / 1001)
                back.append((t2 - t1) * 1e6 / 1001)
        mb, mk = statistics.median(build), statistics.median(back)
        emit({"name": "autograd build (per op)", "dtype": "f32", "elements": 16, "time_us": mb,
              "note": "1001-op graph of [16] tensors, forward incl. launches"})
        emit({"name": "autograd backward (per op)", "dtype": "f32", "elements": 16, "time_us": mk,
              "note": "backward of that graph incl. kernels and sync"})
        emit({"name": "autograd 1000-op graph total", "dtype": "f32", "elements": 16, "time_us": (mb + mk) * 1001,
              "note": "build + backward, us per graph"})

    print(f"\n{'name':<26} {'dtype':<5} {'elements':>12} {'time (us)':>12} {'GB/s':>9} {'copy':>7}")
    print("-" * 76)
    for r in rows:
        if "gbps" in r:
            print(f"{r['name']:<26} {r['dtype']:<5} {r['elements']:>12} {r['time_us']:>12.2f} {r['gbps']:>9.1f} "
                  f"{100 * r['frac_copy']:>6.0f}%")
        else:
            print(f"{r['name']:<26} {r['dtype']:<5} {r['elements']:>12} {r['time_us']:>12.2f} {'-':>9} {'-':>7}  "
                  f"{r.get('note', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
