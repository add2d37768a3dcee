#!/usr/bin/env python3
"""PyTorch side of `seqmix bench attention`: the same shapes, the same JSON lines and table, and a check of
seqmix's outputs and gradients against PyTorch on identical inputs.

    python bench/torch_attention.py [--T 1024,2048,4096,8192,16384] [--tokens 16384] [--H 16] [--hkv 16]
                                    [--D 128] [--iters 20] [--warmup 5] [--backends flash,cudnn] [--check DIR]

Timing: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True) in bf16, one backend at a
  time through torch.nn.attention.sdpa_kernel (FLASH_ATTENTION = FlashAttention-2, CUDNN_ATTENTION =
  cuDNN). q, k, v are [B, H, T, D] contiguous (PyTorch's preferred layout), B = tokens / T.
  fwd: the forward with inputs that require grad (so the kernel keeps its softmax statistics, as ours
  does); bwd: torch.autograd.grad of a retained forward; fwd+bwd: both. Median of --iters runs, each
  between its own pair of CUDA events, after --warmup runs. FLOPs (causal): forward 4 B H T^2 D / 2,
  backward 2.5x forward.
Check (--check DIR, written by `seqmix bench attention --dump DIR`): loads q, k, v, dout (bf16, [B, T, H,
  D]) and seqmix's o, lse, dq, dk, dv; computes an f32 reference (explicit masked softmax on the same bf16
  inputs, upcast) and the bf16 flash backend's results, and prints max |x - ref| / max |ref| for seqmix and
  for torch flash against the f32 reference, and for seqmix against torch flash.
"""
import argparse
import json
import math
import os

import torch
import torch.nn.functional as F

from torch_timing import median_ms  # bench/torch_timing.py

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # torch < 2.3
    SDPBackend = None
    sdpa_kernel = None

BACKENDS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION"}


def forward_flops(B, T, H, D):
    return 4.0 * B * H * D * T * T / 2


def sdpa(q, k, v, gqa):
    if gqa:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def bench(args):
    lengths = [int(x) for x in args.T.split(",") if x]
    gqa = args.hkv != args.H
    dev = torch.device("cuda")
    torch.manual_seed(1234)
    results = {}
    for name in [b for b in args.backends.split(",") if b]:
        if name not in BACKENDS:
            raise SystemExit(f"torch_attention.py: unknown backend {name} (flash, cudnn)")
        if sdpa_kernel is None:
            raise SystemExit("torch_attention.py: needs torch >= 2.3 (torch.nn.attention.sdpa_kernel)")
        backend = getattr(SDPBackend, BACKENDS[name])
        rows = []
        for T in lengths:
            B = max(1, args.tokens // T)
            q = torch.randn(B, args.H, T, args.D, device=dev, dtype=torch.bfloat16, requires_grad=True)
            k = torch.randn(B, args.hkv, T, args.D, device=dev, dtype=torch.bfloat16, requires_grad=True)
            v = torch.randn(B, args.hkv, T, args.D, device=dev, dtype=torch.bfloat16, requires_grad=True)
            g = torch.randn(B, args.H, T, args.D, device=dev, dtype=torch.bfloat16)
            try:
                with sdpa_kernel(backend):
                    out = sdpa(q, k, v, gqa)
                    ms_f = median_ms(lambda: sdpa(q, k, v, gqa), args.warmup, args.iters)
                    ms_b = median_ms(lambda: torch.autograd.grad(out, (q, k, v), g, retain_graph=True),
                                     args.warmup, args.iters)
                    ms_fb = median_ms(lambda: torch.autograd.grad(sdpa(q, k, v, gqa), (q, k, v), g),
                                      args.warmup, args.iters)
            except RuntimeError as e:
                print(json.dumps({"bench": "attention", "impl": f"torch-{name}", "T": T, "error": str(e).splitlines()[0]}))
                del q, k, v, g
                torch.cuda.empty_cache()
                continue
            ff = forward_flops(B, T, args.H, args.D)
            row = {"B": B, "T": T}
            for p, ms, fl in (("fwd", ms_f, ff), ("bwd", ms_b, 2.5 * ff), ("fwd+bwd", ms_fb, 3.5 * ff)):
                tf = fl / (ms * 1e-3) / 1e12
                row[p] = (ms, tf)
                print(json.dumps({"bench": "attention", "impl": f"torch-{name}", "pass": p, "B": B, "T": T, "H": args.H,
                                  "hkv": args.hkv, "D": args.D, "window": 0, "dtype": "bf16", "ms": round(ms, 4),
                                  "tflops": round(tf, 1)}, separators=(",", ":")), flush=True)
            rows.append(row)
            del q, k, v, g, out
            torch.cuda.empty_cache()
        results[name] = rows
    for name, rows in results.items():
        print(f"\nattention (causal), H={args.H} hkv={args.hkv} D={args.D} bf16, impl=torch-{name}")
        print(f"{'B':>6} {'T':>6} {'fwd ms':>10} {'TFLOP/s':>9} {'bwd ms':>10} {'TFLOP/s':>9} {'f+b ms':>10} {'TFLOP/s':>9}")
        for r in rows:
            print(f"{r['B']:>6} {r['T']:>6} {r['fwd'][0]:>10.3f} {r['fwd'][1]:>9.1f} {r['bwd'][0]:>10.3f} "
                  f"{r['bwd'][1]:>9.1f} {r['fwd+bwd'][0]:>10.3f} {r['fwd+bwd'][1]:>9.1f}")


def load(dirpath, name, shape, dtype):
    with open(os.path.join(dirpath, name + ".bin"), "rb") as f:
        data = bytearray(f.read())
    t = torch.frombuffer(data, dtype=dtype)
    if t.numel() != math.prod(shape):
        raise SystemExit(f"torch_attention.py: {name}.bin holds {t.numel()} values, expected {shape}")
    return t.reshape(shape)


def rel(a, ref):
    a, ref = a.float(), ref.float()
    return ((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def check(args):
    with open(os.path.join(args.check, "meta.json")) as f:
        meta = json.load(f)
    B, T, H, Hkv, D, W, scale = (meta[k] for k in ("B", "T", "H", "hkv", "D", "window", "scale"))
    dev = torch.device("cuda")
    bthd = lambda name, h, dt=torch.bfloat16: load(args.check, name, (B, T, h, D), dt).to(dev)
    q, k, v, g = bthd("q", H), bthd("k", Hkv), bthd("v", Hkv), bthd("dout", H)
    ours = {"o": bthd("o", H), "dq": bthd("dq", H), "dk": bthd("dk", Hkv), "dv": bthd("dv", Hkv)}
    ours_lse = load(args.check, "lse", (B, H, T), torch.float32).to(dev)

    # f32 reference: explicit masked softmax on the same (bf16-valued) inputs, [B, H, T, D].
    def to_bhtd(x, dt):
        return x.transpose(1, 2).to(dt).detach().requires_grad_(True)

    group = H // Hkv
    q32, k32, v32 = to_bhtd(q, torch.float32), to_bhtd(k, torch.float32), to_bhtd(v, torch.float32)
    kr, vr = k32.repeat_interleave(group, dim=1), v32.repeat_interleave(group, dim=1)
    i = torch.arange(T, device=dev)[:, None]
    j = torch.arange(T, device=dev)[None, :]
    mask = j <= i
    if W > 0:
        mask = mask & (j > i - W)
    scores = (q32 @ kr.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    lse_ref = torch.logsumexp(scores, dim=-1)
    o32 = torch.softmax(scores, dim=-1) @ vr
    dq32, dk32, dv32 = torch.autograd.grad(o32, (q32, k32, v32), g.transpose(1, 2).float())
    ref = {"o": o32, "dq": dq32, "dk": dk32, "dv": dv32}

    # torch's bf16 flash backend on the same inputs (plain causal only: it has no sliding window).
    flash = None
    if W == 0 and sdpa_kernel is not None:
        qb, kb, vb = to_bhtd(q, torch.bfloat16), to_bhtd(k, torch.bfloat16), to_bhtd(v, torch.bfloat16)
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                ob = sdpa(qb, kb, vb, Hkv != H)
                dqb, dkb, dvb = torch.autograd.grad(ob, (qb, kb, vb), g.transpose(1, 2))
            flash = {"o": ob, "dq": dqb, "dk": dkb, "dv": dvb}
        except RuntimeError as e:
            print(json.dumps({"bench": "attention", "check": "torch-flash", "error": str(e).splitlines()[0]}))

    print(f"\ncheck: B={B} T={T} H={H} hkv={Hkv} D={D} window={W}, max |x - ref| / max |ref|")
    print(f"{'tensor':>7} {'seqmix vs f32':>14} {'flash vs f32':>13} {'seqmix vs flash':>16}")
    ok = True
    for name in ("o", "dq", "dk", "dv"):
        mine = ours[name].transpose(1, 2)  # [B, H, T, D]
        e_ref = rel(mine, ref[name])
        e_fl = rel(flash[name], ref[name]) if flash else float("nan")
        e_mf = rel(mine, flash[name]) if flash else float("nan")
        ok = ok and e_ref < 2e-2
        print(json.dumps({"bench": "attention", "check": name, "seqmix_vs_f32": e_ref, "flash_vs_f32": e_fl,
                          "seqmix_vs_flash": e_mf}, separators=(",", ":")))
        print(f"{name:>7} {e_ref:>14.2e} {e_fl:>13.2e} {e_mf:>16.2e}")
    e_lse = rel(ours_lse, lse_ref)
    ok = ok and e_lse < 1e-4
    print(f"{'lse':>7} {e_lse:>14.2e}")
    print("check " + ("passed" if ok else "FAILED") + " (tolerance 2e-2 for bf16 tensors, 1e-4 for the f32 lse)")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", default="1024,2048,4096,8192,16384")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--hkv", type=int, default=16)
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--backends", default="flash,cudnn")
    ap.add_argument("--check", metavar="DIR", help="compare against the tensors `seqmix bench attention --dump DIR` wrote")
    ap.add_argument("--no-bench", action="store_true", help="only run --check")
    args = ap.parse_args()
    args.iters = max(args.iters, 10)
    if not torch.cuda.is_available():
        raise SystemExit("torch_attention.py: no CUDA device")
    if args.H % args.hkv:
        raise SystemExit("torch_attention.py: --H must be a multiple of --hkv")
    ok = True
    if args.check:
        ok = check(args)
    if not args.no_bench:
        bench(args)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
