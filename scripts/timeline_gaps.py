#!/usr/bin/env python3
"""Where a training step leaves the GPU idle: reads a kernel-trace timeline (SEQMIX_KERNEL_TRACE with
SEQMIX_KERNEL_TRACE_STEPS, see train/step_profile.h) and sums the GPU's idle gaps by the phase the host was in
(the step's marks: the host launches forward until the "forward" mark, then backward, and so on), then lists
the longest gaps with the kernels around them.

    python3 scripts/timeline_gaps.py RUN.timeline.csv [STEPS] [TOP]     (TOP 0: the one-line summary only)
"""
import csv
import sys


def main():
    path = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 12
    try:
        rows = list(csv.DictReader(open(path)))
    except FileNotFoundError:
        print(f"{path}: missing")
        return
    after = {"step start": "launching forward", "forward": "launching backward", "backward": "reduction",
             "reduction wait": "norm+loss", "norm+loss": "optimizer", "optimizer": "between steps"}
    phase = "between steps"
    marks = []  # (time, host phase from then on)
    kernels = []
    for r in rows:
        s, e = float(r["start_us"]), float(r["end_us"])
        if r["stream"] == "-1":
            phase = after.get(r["name"][2:], r["name"][2:])
            marks.append((s, phase))
        else:
            kernels.append((s, e, float(r["idle_before_us"]), r["name"]))

    def phase_at(t):
        p = "between steps"
        for mt, mp in marks:
            if mt > t:
                break
            p = mp
        return p

    by_phase, gaps = {}, []
    for i, (s, e, idle, name) in enumerate(kernels):
        if idle <= 0:
            continue
        p = phase_at(s - idle / 2)
        by_phase[p] = by_phase.get(p, 0.0) + idle
        gaps.append((idle, p, kernels[i - 1][3] if i else "", name))
    span = (max(k[1] for k in kernels) - kernels[0][0]) if kernels else 0
    busy = span - sum(by_phase.values())
    ngaps = sum(1 for k in kernels if k[2] > 0)
    print(f"{path}: {steps} steps, {len(kernels) / steps:.0f} records per step; per step: span {span / steps / 1e3:.3f} ms, "
          f"busy {busy / steps / 1e3:.3f} ms, idle {sum(by_phase.values()) / steps / 1e3:.3f} ms "
          f"(mean gap {sum(by_phase.values()) / max(ngaps, 1):.2f} us)")
    if top == 0:
        return
    order = ["launching forward", "launching backward", "reduction", "norm+loss", "optimizer", "between steps"]
    print("  idle per step by host phase (ms): " + ", ".join(
        f"{p} {by_phase.get(p, 0) / steps / 1e3:.3f}" for p in order + sorted(set(by_phase) - set(order))))
    big = [g for g in gaps if g[0] > 20]
    print(f"  {len(gaps) / steps:.0f} gaps per step; {len(big) / steps:.1f} of them over 20 us, "
          f"{sum(g[0] for g in big) / steps / 1e3:.3f} ms; the rest (launch-bound stretches) "
          f"{sum(g[0] for g in gaps if g[0] <= 20) / steps / 1e3:.3f} ms")
    print(f"  longest gaps (us, host phase, kernel before -> kernel after):")
    for idle, p, a, b in sorted(gaps, reverse=True)[:top]:
        print(f"  {idle:8.1f}  {p:18s} {a[:60]} -> {b[:60]}")


if __name__ == "__main__":
    main()
