#!/usr/bin/env python3
"""Fits the sim backend's calibration for one GPU from an engine_bench report.

engine_bench (bench/gpu/engine_bench.cc) times the cuda backend's decode and prefill Steps on a
real card and writes them as JSON (--json). This tool finds the calibration entry of that card
(matmul_efficiency, hbm_efficiency, attention_efficiency, step_overhead_us,
per_sequence_overhead_us) for which the sim's PerfModel predicts those step times best, writes
it into agent/engine/sim/calibration.json AND the copy compiled into the binary
(agent/engine/sim/calibration.cc, kBuiltinJson; tests/unit/sim_perf_model_test.cc keeps the two
identical) with "measured": true, the card and the date, and prints predicted against measured
step times with the error (target: within 10%).

The model (re-implemented here, stdlib only): PerfModel::CostOf in agent/engine/sim/perf_model.cc
with tensor_parallel 1 —
  step = max(gemm / (peak * matmul_eff) + attention / (peak * attention_eff),
             bytes / (hbm_bandwidth * hbm_eff)) + (step_overhead_us + per_seq_us * seqs) * 1e-6
  gemm = 2 * layer_params * new_tokens + 2 * vocab * hidden * sampled_seqs
  attention = 4 * layers * heads * head_dim * pairs, pairs = n*c + n(n+1)/2 per sequence
  bytes = 2 * weight_params + (kv_read + kv_written tokens) * kv_bytes_per_token
with peak and hbm_bandwidth the catalog's datasheet values (gpu_catalog.cc; engine_bench writes
them into the report). Two guards keep this copy honest: engine_bench's report carries the C++
model's own predictions (rows[].sim_ms, with the calibration it used), which this tool must
reproduce before it fits anything; and --sim-predict BIN re-predicts with the C++ model
(bench/gpu/sim_predict.cc) from the calibration file just written.

Fit: decode steps are bandwidth-bound and prefill compute-bound, so first a weighted linear
least-squares fit of the decode rows (hbm_eff and the two overheads), then of the prefill rows
(matmul and attention efficiency, overheads fixed), then a Nelder-Mead refinement of all five on
the squared relative errors with the exact max() model. Parameters the rows cannot determine
(one decode context only, one prefill length only) keep their current values.

Usage:
  python3 bench/gpu/fit_calibration.py engine_bench.json [--dry-run]
      [--sim-predict build/sim_predict] [--gpu H200] [--date YYYY-MM-DD]
      [--calibration-json PATH] [--calibration-cc PATH]
Exit 0 when it fitted (and wrote, unless --dry-run), whatever the error; 1 on bad input.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_JSON = os.path.join(REPO, "agent", "engine", "sim", "calibration.json")
DEFAULT_CC = os.path.join(REPO, "agent", "engine", "sim", "calibration.cc")
FITTED = ("matmul_efficiency", "hbm_efficiency", "attention_efficiency", "step_overhead_us",
          "per_sequence_overhead_us")
CATALOG_NAMES = ("GB200", "B200", "H200", "H100")  # gpu_catalog.cc, in its matching order
TARGET_ERROR = 0.10
RAW_BEGIN = 'R"pdpool_json('
RAW_END = ')pdpool_json"'


class InputError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# The sim's model (agent/engine/sim/perf_model.cc, PerfModel::PerfModel, Reduce and CostOf).

class Shape:
    def __init__(self, model):
        try:
            self.vocab = float(model["vocab_size"])
            self.hidden = float(model["hidden_size"])
            self.inter = float(model["intermediate_size"])
            self.layers = float(model["num_layers"])
            self.heads = float(model["num_heads"])
            self.kv_heads = float(model["num_kv_heads"])
            self.head_dim = float(model["head_dim"])
            tied = bool(model["tie_word_embeddings"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"report: model.{e} is missing or not a number") from None
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        per_layer = (self.hidden * q + 2 * self.hidden * kv + q * self.hidden +
                     3 * self.hidden * self.inter + 2 * self.hidden)
        self.layer_params = per_layer * self.layers
        self.lm_head_params = self.vocab * self.hidden
        self.weight_params = (self.layer_params + self.hidden + self.lm_head_params +
                              (0 if tied else self.lm_head_params))
        self.kv_bytes_per_token = 2 * self.layers * self.kv_heads * self.head_dim * 2


class Work:
    """A case reduced to the sums PerfModel::Reduce makes (every sequence samples)."""

    def __init__(self, shape, phase, batch, context, tokens):
        b, c, n = float(batch), float(context), float(tokens)
        self.sequences = b
        self.tokens = b * n
        pairs = b * (n * c + n * (n + 1) / 2)
        kv_tokens = b * c + b * n
        self.gemm = 2 * shape.layer_params * self.tokens + 2 * shape.lm_head_params * b
        self.attention = 4 * shape.layers * shape.heads * shape.head_dim * pairs
        self.bytes = 2 * shape.weight_params + kv_tokens * shape.kv_bytes_per_token
        self.phase = phase


def predict_s(work, p, peak, bw):
    compute = work.gemm / (peak * p["matmul_efficiency"]) + work.attention / (
        peak * p["attention_efficiency"])
    memory = work.bytes / (bw * p["hbm_efficiency"])
    overhead = (p["step_overhead_us"] + p["per_sequence_overhead_us"] * work.sequences) * 1e-6
    return max(compute, memory) + overhead


# ---------------------------------------------------------------------------------------------
# Least squares, stdlib only.

def solve(matrix, rhs):
    """Gaussian elimination with partial pivoting; None when (nearly) singular."""
    n = len(rhs)
    a = [row[:] + [rhs[i]] for i, row in enumerate(matrix)]
    scale = max(abs(v) for row in matrix for v in row) or 1.0
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-12 * scale:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(n):
            if r != col:
                f = a[r][col] / a[col][col]
                for k in range(col, n + 1):
                    a[r][k] -= f * a[col][k]
    return [a[i][n] / a[i][i] for i in range(n)]


def weighted_lsq(columns, target, weights):
    """min Σ w_i (Σ_j x_j col_j[i] − t_i)²; columns normalized for conditioning."""
    norms = [math.sqrt(sum(v * v for v in col)) or 1.0 for col in columns]
    cols = [[v / s for v in col] for col, s in zip(columns, norms)]
    k = len(cols)
    ata = [[sum(w * cols[i][r] * cols[j][r] for r, w in enumerate(weights)) for j in range(k)]
           for i in range(k)]
    atb = [sum(w * cols[i][r] * target[r] for r, w in enumerate(weights)) for i in range(k)]
    x = solve(ata, atb)
    return None if x is None else [v / s for v, s in zip(x, norms)]


def nelder_mead(f, x0, steps, iterations=4000, tol=1e-14):
    pts = [list(x0)]
    for i, s in enumerate(steps):
        p = list(x0)
        p[i] += s
        pts.append(p)
    vals = [f(p) for p in pts]
    for _ in range(iterations):
        order = sorted(range(len(pts)), key=lambda i: vals[i])
        pts = [pts[i] for i in order]
        vals = [vals[i] for i in order]
        if abs(vals[-1] - vals[0]) <= tol * (abs(vals[0]) + tol):
            break
        n = len(x0)
        centroid = [sum(p[j] for p in pts[:-1]) / n for j in range(n)]
        worst = pts[-1]
        refl = [c + (c - w) for c, w in zip(centroid, worst)]
        fr = f(refl)
        if fr < vals[0]:
            exp = [c + 2 * (c - w) for c, w in zip(centroid, worst)]
            fe = f(exp)
            pts[-1], vals[-1] = (exp, fe) if fe < fr else (refl, fr)
        elif fr < vals[-2]:
            pts[-1], vals[-1] = refl, fr
        else:
            con = [c + 0.5 * (w - c) for c, w in zip(centroid, worst)]
            fc = f(con)
            if fc < vals[-1]:
                pts[-1], vals[-1] = con, fc
            else:
                best = pts[0]
                pts = [best] + [[b + 0.5 * (p[j] - b) for j, b in enumerate(best)]
                                for p in pts[1:]]
                vals = [vals[0]] + [f(p) for p in pts[1:]]
    i = min(range(len(pts)), key=lambda i: vals[i])
    return pts[i], vals[i]


# ---------------------------------------------------------------------------------------------

def clamp_params(p):
    q = dict(p)
    for k in ("matmul_efficiency", "hbm_efficiency", "attention_efficiency"):
        q[k] = min(1.0, max(1e-3, q[k]))
    for k in ("step_overhead_us", "per_sequence_overhead_us"):
        q[k] = max(0.0, q[k])
    return q


def fit(rows, start, peak, bw):
    """rows: [(Work, measured seconds)]. start: the current entry (fallback values)."""
    p = {k: float(start[k]) for k in FITTED}
    decode = [(w, t) for w, t in rows if w.phase == "decode"]
    prefill = [(w, t) for w, t in rows if w.phase == "prefill"]
    notes = []
    kept = set()  # parameters the rows do not determine: their current values stay

    # 1. Decode: t = bytes/(bw·hbm) + so + pso·seqs (µs), weights 1/t² (relative errors). When
    # the rows cannot determine an overhead (too few, collinear, or a negative fit), it keeps
    # its current value, per-sequence first.
    if decode:
        target = [t for _, t in decode]
        weights = [1 / (t * t) for t in target]
        cols = [[w.bytes for w, _ in decode], [1e-6] * len(decode),
                [1e-6 * w.sequences for w, _ in decode]]
        names = ["inverse_rate", "step_overhead_us", "per_sequence_overhead_us"]
        for keep in (3, 2, 1):
            x = None
            if len(decode) >= keep:
                resid = [t - sum(p[names[j]] * cols[j][i] for j in range(keep, 3))
                         for i, t in enumerate(target)]
                x = weighted_lsq(cols[:keep], resid, weights)
            if x is not None and x[0] > 0 and all(v >= 0 for v in x[1:]):
                p["hbm_efficiency"] = 1 / (x[0] * bw)
                for j in range(1, keep):
                    p[names[j]] = x[j]
                break
            if keep > 1:
                kept.add(names[keep - 1])
                notes.append(f"the decode rows do not determine {names[keep - 1]}: kept "
                             f"{p[names[keep - 1]]}")

    # 2. Prefill: t − overhead = gemm/(peak·mm) + attention/(peak·att).
    if prefill:
        target = [t - (p["step_overhead_us"] + p["per_sequence_overhead_us"] * w.sequences) * 1e-6
                  for w, t in prefill]
        weights = [1 / (t * t) for _, t in prefill]
        x = None
        if len(prefill) >= 2:
            x = weighted_lsq([[w.gemm for w, _ in prefill], [w.attention for w, _ in prefill]],
                             target, weights)
            if x is not None and (x[0] <= 0 or x[1] <= 0):
                x = None
        if x is not None:
            p["matmul_efficiency"] = 1 / (x[0] * peak)
            p["attention_efficiency"] = 1 / (x[1] * peak)
        else:
            kept.add("attention_efficiency")
            notes.append("the prefill rows do not determine attention_efficiency: kept "
                         f"{p['attention_efficiency']}")
            resid = [t - w.attention / (peak * p["attention_efficiency"])
                     for (w, _), t in zip(prefill, target)]
            x = weighted_lsq([[w.gemm for w, _ in prefill]], resid, weights)
            if x is not None and x[0] > 0:
                p["matmul_efficiency"] = 1 / (x[0] * peak)
    p = clamp_params(p)

    # 3. Refine all five with the exact model.
    free = [k for k in FITTED if k not in kept]

    def loss(vec):
        q = dict(p)
        for k, v in zip(free, vec):
            q[k] = v
        if any(q[k] <= 0 or q[k] > 1 for k in FITTED[:3]) or any(q[k] < 0 for k in FITTED[3:]):
            return 1e30
        return sum(math.log(predict_s(w, q, peak, bw) / t) ** 2 for w, t in rows)

    x0 = [p[k] for k in free]
    best, _ = nelder_mead(loss, x0, [max(abs(v) * 0.05, 0.5 if k.endswith("_us") else 0.01)
                                     for k, v in zip(free, x0)])
    if loss(best) < loss(x0):
        for k, v in zip(free, best):
            p[k] = v
    return clamp_params(p), notes


def rounded(p):
    q = dict(p)
    for k in ("matmul_efficiency", "hbm_efficiency", "attention_efficiency"):
        q[k] = min(1.0, round(q[k], 4))
    for k in ("step_overhead_us", "per_sequence_overhead_us"):
        q[k] = round(q[k], 2)
    return q


# ---------------------------------------------------------------------------------------------

def canonical_gpu(name):
    lower = name.lower()
    if "gh200" in lower:
        return None
    for n in CATALOG_NAMES:
        if n.lower() in lower:
            return n
    return None


def load_report(path, gpu_override):
    try:
        with open(path) as f:
            rep = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: {e}") from None
    if rep.get("skipped"):
        raise InputError(f"{path}: engine_bench measured nothing: {rep['skipped']}")
    gpu = gpu_override or rep.get("gpu") or canonical_gpu(rep.get("device_name", ""))
    gpu = canonical_gpu(gpu or "")
    if gpu is None:
        raise InputError(f"{path}: device {rep.get('device_name')!r} is not in the GPU catalog "
                         f"({', '.join(CATALOG_NAMES)}); pass --gpu")
    sheet = rep.get("datasheet") or {}
    peak, bw = sheet.get("bf16_flops"), sheet.get("hbm_bandwidth")
    if not peak or not bw:
        raise InputError(f"{path}: datasheet.bf16_flops / hbm_bandwidth missing (the catalog's "
                         f"values for {gpu}, written by engine_bench)")
    shape = Shape(rep.get("model") or {})
    rows = []
    for i, r in enumerate(rep.get("rows") or []):
        if r.get("ms") is None:
            continue
        phase = r.get("phase")
        if phase not in ("decode", "prefill"):
            raise InputError(f"{path}: rows[{i}].phase must be decode or prefill")
        rows.append((r, Work(shape, phase, r["batch"], r["context"], r["tokens"]),
                     float(r["ms"]) * 1e-3))
    n_decode = sum(1 for _, w, _ in rows if w.phase == "decode")
    n_prefill = len(rows) - n_decode
    if n_decode < 2 or n_prefill < 1:
        raise InputError(f"{path}: needs at least 2 measured decode rows and 1 prefill row, has "
                         f"{n_decode} and {n_prefill}")
    return rep, gpu, float(peak), float(bw), rows


def check_parity(rep, rows, peak, bw):
    """The report's C++ predictions (sim_ms) must equal this file's model with the same
    calibration. Returns the number of rows compared."""
    cal = rep.get("sim_calibration")
    if not cal:
        return 0
    compared = 0
    for r, w, _ in rows:
        if r.get("sim_ms") is None:
            continue
        mine = predict_s(w, cal, peak, bw) * 1e3
        if abs(mine - r["sim_ms"]) > 1e-6 * r["sim_ms"] + 2e-6:
            raise InputError(
                f"{r['name']}: the C++ PerfModel predicted {r['sim_ms']:.6f} ms, this tool "
                f"{mine:.6f} ms with the same calibration: fit_calibration.py no longer matches "
                "agent/engine/sim/perf_model.cc; update its model first")
        compared += 1
    return compared


def updated_document(doc, gpu, p, rep, date, stats):
    doc = json.loads(json.dumps(doc))  # deep copy, key order kept
    gpus = doc.setdefault("gpus", {})
    key = next((k for k in gpus if k.lower() == gpu.lower()), gpu)
    entry = gpus.setdefault(key, dict(gpus.get("default", {})))
    card = rep.get("device_name") or gpu
    model = rep.get("model", {}).get("preset", "?")
    ceil = rep.get("ceilings", {})
    sheet = rep.get("datasheet", {})
    entry["notes"] = (
        f"measured: fitted by bench/gpu/fit_calibration.py to {stats['rows']} engine_bench step "
        f"times of the cuda backend ({model}, bf16, {stats['decode']} decode and "
        f"{stats['prefill']} prefill cases) on {card}, {date}: predicted vs measured max error "
        f"{100 * stats['max_error']:.1f}%, mean {100 * stats['mean_error']:.1f}%. Efficiencies are "
        f"fractions of the datasheet (the same run measured a copy at "
        f"{ceil.get('copy_bytes_per_s', 0) / 1e12:.2f} TB/s = "
        f"{ceil.get('copy_bytes_per_s', 0) / sheet.get('hbm_bandwidth', 1):.3f} of it, a GEMM at "
        f"{ceil.get('gemm_flops_per_s', 0) / 1e12:.0f} TFLOP/s = "
        f"{ceil.get('gemm_flops_per_s', 0) / sheet.get('bf16_flops', 1):.3f}). "
        "nvlink_efficiency and tp_allreduce_latency_us: assumed (one GPU measured).")
    for k in FITTED:
        entry[k] = p[k]
    doc["measured"] = True
    doc["card"] = card
    doc["date"] = date
    doc["source"] = (
        f"gpus.{key}: fitted to pdpool cuda-backend step times measured on {card} ({date}), see "
        f"its notes. Every other entry: datasheet ceilings (gpu_catalog.cc) times ASSUMED "
        "efficiencies, not measured.")
    return doc


def write_outputs(doc, json_path, cc_path):
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if RAW_END in text:
        raise InputError(f"the calibration text contains {RAW_END!r}")
    with open(cc_path) as f:
        cc = f.read()
    begin = cc.find(RAW_BEGIN)
    end = cc.find(RAW_END, begin + len(RAW_BEGIN))
    if begin < 0 or end < 0:
        raise InputError(f"{cc_path}: no {RAW_BEGIN}...{RAW_END} raw string (kBuiltinJson) found")
    cc = cc[:begin + len(RAW_BEGIN)] + text + cc[end:]
    for path, content in ((json_path, text), (cc_path, cc)):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(content)
        os.replace(tmp, path)


def cross_check_cpp(sim_predict, report_path, json_path, rows, p, peak, bw):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "predicted.json")
        proc = subprocess.run([sim_predict, "--bench-json", report_path, "--calibration",
                               json_path, "--json", out], capture_output=True, text=True)
        if proc.returncode != 0:
            raise InputError(f"{sim_predict} failed: {proc.stderr.strip()}")
        with open(out) as f:
            cpp = {r["name"]: r["sim_ms"] for r in json.load(f)["rows"]}
    worst = 0.0
    for r, w, _ in rows:
        mine = predict_s(w, p, peak, bw) * 1e3
        worst = max(worst, abs(mine - cpp[r["name"]]) / cpp[r["name"]])
    if worst > 1e-6:
        raise InputError(f"the C++ PerfModel with the written calibration differs from this "
                         f"tool's prediction by {100 * worst:.4f}%")
    return worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("report", help="engine_bench --json output")
    ap.add_argument("--gpu", help="catalog GPU to fit (default: the report's)")
    ap.add_argument("--date", help="calibration date (default: the report's, YYYY-MM-DD)")
    ap.add_argument("--calibration-json", default=DEFAULT_JSON)
    ap.add_argument("--calibration-cc", default=DEFAULT_CC,
                    help="the C++ file holding the compiled-in copy (kBuiltinJson)")
    ap.add_argument("--dry-run", action="store_true", help="fit and print, write nothing")
    ap.add_argument("--sim-predict", help="bench/gpu/sim_predict binary: re-predict with the C++ "
                    "PerfModel from the written calibration and compare")
    args = ap.parse_args(argv)
    try:
        rep, gpu, peak, bw, rows = load_report(args.report, args.gpu)
        parity = check_parity(rep, rows, peak, bw)
        with open(args.calibration_json) as f:
            doc = json.load(f)
        gpus = doc.get("gpus", {})
        current = next((v for k, v in gpus.items() if k.lower() == gpu.lower()),
                       gpus.get("default"))
        if current is None:
            raise InputError(f"{args.calibration_json}: no gpus.{gpu} and no gpus.default")
        start = dict(gpus.get("default", {}), **current)
        fitted, notes = fit([(w, t) for _, w, t in rows], start, peak, bw)
        p = rounded(fitted)

        print(f"fit_calibration: {args.report}: {rep.get('device_name')} (catalog {gpu}), model "
              f"{rep.get('model', {}).get('preset')}, {len(rows)} measured rows"
              + (f"; this model matches the C++ PerfModel on {parity} rows" if parity else ""))
        for n in notes:
            print(f"  note: {n}")
        print(f"\n{'field':26} {'was':>10} {'fitted':>10}")
        for k in FITTED:
            print(f"{k:26} {float(current.get(k, start[k])):>10.4g} {p[k]:>10.4g}")
        print(f"\n{'case':16} {'measured ms':>12} {'sim ms':>10} {'error':>8} {'was ms':>10}")
        errors = []
        for r, w, t in rows:
            pred = predict_s(w, p, peak, bw)
            old = predict_s(w, start, peak, bw)
            err = (pred - t) / t
            errors.append(abs(err))
            print(f"{r['name']:16} {t * 1e3:>12.3f} {pred * 1e3:>10.3f} {100 * err:>7.1f}% "
                  f"{old * 1e3:>10.3f}")
        stats = dict(rows=len(rows), max_error=max(errors), mean_error=sum(errors) / len(errors),
                     decode=sum(1 for _, w, _ in rows if w.phase == "decode"),
                     prefill=sum(1 for _, w, _ in rows if w.phase == "prefill"))
        verdict = "met" if stats["max_error"] <= TARGET_ERROR else "MISSED"
        print(f"\nmax error {100 * stats['max_error']:.1f}%, mean {100 * stats['mean_error']:.1f}% "
              f"(target within {100 * TARGET_ERROR:.0f}%: {verdict})")

        date = args.date or (rep.get("date") or "")[:10]
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
            raise InputError(f"no date: the report's is {rep.get('date')!r}; pass --date")
        if args.dry_run:
            print("dry run: nothing written")
            return 0
        new_doc = updated_document(doc, gpu, p, rep, date, stats)
        write_outputs(new_doc, args.calibration_json, args.calibration_cc)
        print(f"wrote gpus.{gpu} into {args.calibration_json} and {args.calibration_cc} "
              "(measured: true)")
        if args.sim_predict:
            worst = cross_check_cpp(args.sim_predict, args.report, args.calibration_json, rows, p,
                                    peak, bw)
            print(f"C++ PerfModel (sim_predict) with the written file agrees: max difference "
                  f"{100 * worst:.2g}%")
        return 0
    except InputError as e:
        print(f"fit_calibration: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
