#!/usr/bin/env python3
"""Peer for bench/gpu/sampling_bench.cc: token sampling as Hugging Face transformers does it.

For each case (greedy; temperature 1; temperature 0.7 with top-p 0.9) and batch size, on
float32 logits of the vocabulary (normal, standard deviation 2): greedy is torch.argmax;
sampling is transformers' own TemperatureLogitsWarper and TopPLogitsWarper (a sort, a softmax
and a cumulative sum) followed by a softmax and torch.multinomial, as generate() runs them.
Each call is timed alone between CUDA events (median of --repeats), as sampling_bench times
pdpool's kernel.

Usage: python3 peer_torch_sampling.py --json OUT.json [--vocab 128256] [--rows 1,64]
Needs torch and transformers (present on the lent GPU machines).
"""
import argparse
import json

import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

# name, temperature, top_p: the same three cases as sampling_bench.cc's kCases.
CASES = [("greedy", 0.0, 1.0), ("temperature 1", 1.0, 1.0), ("top-p 0.9, T 0.7", 0.7, 0.9)]


def sampler(temperature, top_p):
    if temperature == 0.0:
        return lambda ids, logits: torch.argmax(logits, dim=-1)
    warpers = [TemperatureLogitsWarper(temperature)]
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))

    def sample(ids, logits):
        for w in warpers:
            logits = w(ids, logits)
        return torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1).squeeze(1)

    return sample


def median_us(fn, repeats):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop) * 1e3)
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--rows", default="1,64")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = [int(r) for r in args.rows.split(",")]
    results = []
    for name, temperature, top_p in CASES:
        for b in rows:
            logits = 2.0 * torch.randn(b, args.vocab, device="cuda", dtype=torch.float32)
            ids = torch.zeros(b, 1, dtype=torch.long, device="cuda")
            fn = sampler(temperature, top_p)
            us = median_us(lambda: fn(ids, logits), args.repeats)
            results.append(dict(case=name, rows=b, us=us))
            print(f"{name:18} rows {b:3}: {us:9.1f} us")
    with open(args.json, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), vocab=args.vocab,
                       impl="transformers TemperatureLogitsWarper + TopPLogitsWarper + "
                            "torch.softmax + torch.multinomial; greedy: torch.argmax",
                       rows=results), f, indent=1)


if __name__ == "__main__":
    main()
