"""Benchmarks that print numbers: ``catvae bench estimators`` (and ``catvae bench train``)."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import estimators

#: the paper's VAE latent shapes (batch 200) and Table 5's VAE estimator settings.
VAE_SHAPES = ((48, 2), (30, 10), (32, 64))
VAE_SETTINGS = {
    "gumbel": {"tau": 0.5},
    "st": {"tau": 1.0},
    "reinmax": {"tau": 1.0},
    "redge": {"n_steps": 4, "t_1": 0.5},
    "redge_max": {"n_steps": 10, "t_1": 0.5},
    "redge_cov": {"n_steps": 3, "t_1": 0.5},
    "redge_max_cov": {"n_steps": 3, "t_1": 0.5},
}
REDGE = ("redge", "redge_max", "redge_cov", "redge_max_cov")


def time_estimator(est, batch: int, L: int, K: int, device: torch.device, repeats: int, inner: int) -> float:
    """Median seconds of one forward+backward of ``est`` on logits ``[batch, L, K]``."""
    logits = torch.randn(batch, L, K, device=device, requires_grad=True)
    weight = torch.randn(batch, L, K, device=device)

    def step():
        logits.grad = None
        (est(logits) * weight).sum().backward()

    for _ in range(max(3, inner // 4)):  # warm-up
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(inner):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def bench_estimators(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    names = args.estimators or list(VAE_SETTINGS)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else VAE_SHAPES
    torch.manual_seed(0)
    print(f"forward+backward per call, batch {args.batch}, device {device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; median of {args.repeats}x{args.inner} calls")
    header = f"{'estimator':<15}{'settings':<22}" + "".join(f"{f'L={L},K={K}':>24}" for L, K in shapes)
    print(header)
    print("-" * len(header))
    base = {}
    for name in ["gumbel"] + [n for n in names if n != "gumbel"]:
        kwargs = VAE_SETTINGS.get(name, {})
        cells = []
        variants = [("", True)] + ([(" unfused", False)] if args.unfused and name in REDGE else [])
        for suffix, fused in variants:
            est = estimators.build(name, **kwargs, **({} if name not in REDGE else {"fused": fused}))
            cells = []
            for L, K in shapes:
                t = time_estimator(est, args.batch, L, K, device, args.repeats, args.inner)
                if name == "gumbel":
                    base[(L, K)] = t
                cells.append(f"{t * 1e6:9.0f} us ({t / base[(L, K)]:4.2f}x)")
            setting = ",".join(f"{k}={v}" for k, v in kwargs.items())
            print(f"{name + suffix:<15}{setting:<22}" + "".join(f"{c:>24}" for c in cells))
    print("(ratio = time / Gumbel-ST time at the same shape)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks that print timing tables")
    bsub = p.add_subparsers(dest="bench", required=True)
    e = bsub.add_parser("estimators", help="forward+backward time of each estimator at the VAE shapes")
    e.add_argument("--estimators", nargs="*", choices=estimators.available(), help="default: all")
    e.add_argument("--shapes", nargs="*", help="LxK shapes, default: 48x2 30x10 32x64")
    e.add_argument("--batch", type=int, default=200)
    e.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    e.add_argument("--repeats", type=int, default=7)
    e.add_argument("--inner", type=int, default=50)
    e.add_argument("--unfused", action="store_true", help="also time the plain-autograd ReDGE implementation")
    e.set_defaults(func=bench_estimators)
