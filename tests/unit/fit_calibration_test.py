#!/usr/bin/env python3
"""Tests for bench/gpu/fit_calibration.py (ctest `fit_calibration`, label unit).

sim_predict (bench/gpu/sim_predict.cc) turns made-up H200 efficiencies into a synthetic
engine_bench report whose step times are the C++ PerfModel's own predictions; fitting that
report must give the efficiencies back, write calibration.json and the compiled-in copy in
calibration.cc identically, leave every other entry alone, and agree with the C++ model when it
re-predicts from the written file. Also: noisy measurements still fit within the 10% target,
and bad reports are refused. Only temporary copies of the calibration files are written.

Usage: fit_calibration_test.py --sim-predict BUILD/sim_predict --source-dir SRC
"""
import argparse
import copy
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

ARGS = None
TRUTH = dict(matmul_efficiency=0.71, hbm_efficiency=0.83, attention_efficiency=0.42,
             step_overhead_us=55.0, per_sequence_overhead_us=3.5)


def load_tool():
    sys.dont_write_bytecode = True  # no __pycache__ in the source tree
    path = os.path.join(ARGS.source_dir, "bench", "gpu", "fit_calibration.py")
    spec = importlib.util.spec_from_file_location("fit_calibration", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, path


def read(path):
    with open(path) as f:
        return f.read()


def builtin_json(cc_text):
    begin = cc_text.index('R"pdpool_json(') + len('R"pdpool_json(')
    end = cc_text.index(')pdpool_json"', begin)
    return json.loads(cc_text[begin:end])


class FitCalibrationTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="fit_calibration_test.")
        self.tool, self.tool_path = load_tool()
        sim_dir = os.path.join(ARGS.source_dir, "agent", "engine", "sim")
        self.repo_json = os.path.join(sim_dir, "calibration.json")
        self.repo_cc = os.path.join(sim_dir, "calibration.cc")
        self.repo_before = (read(self.repo_json), read(self.repo_cc))
        self.cal_json = os.path.join(self.tmp, "calibration.json")
        self.cal_cc = os.path.join(self.tmp, "calibration.cc")
        shutil.copy(self.repo_json, self.cal_json)
        shutil.copy(self.repo_cc, self.cal_cc)
        self.base = json.loads(read(self.repo_json))
        made_up = copy.deepcopy(self.base)
        made_up["gpus"]["H200"].update(TRUTH)
        self.made_up_path = os.path.join(self.tmp, "made_up.json")
        with open(self.made_up_path, "w") as f:
            json.dump(made_up, f)
        self.report = os.path.join(self.tmp, "synthetic_report.json")
        proc = subprocess.run([ARGS.sim_predict, "--gpu", "H200", "--calibration",
                               self.made_up_path, "--json", self.report],
                              capture_output=True, text=True)
        self.assertEqual(proc.returncode, 0, proc.stderr)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)
        # The repository's own files were never touched.
        self.assertEqual((read(self.repo_json), read(self.repo_cc)), self.repo_before)

    def run_tool(self, *extra, report=None):
        return subprocess.run(
            [sys.executable, self.tool_path, report or self.report, "--calibration-json",
             self.cal_json, "--calibration-cc", self.cal_cc, *extra],
            capture_output=True, text=True)

    def test_recovers_known_efficiencies_and_writes_both_copies(self):
        proc = self.run_tool("--date", "2026-01-02", "--sim-predict", ARGS.sim_predict)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        written = json.loads(read(self.cal_json))
        h200 = written["gpus"]["H200"]
        for k in ("matmul_efficiency", "hbm_efficiency", "attention_efficiency"):
            self.assertAlmostEqual(h200[k], TRUTH[k], delta=1e-3, msg=k)
        for k in ("step_overhead_us", "per_sequence_overhead_us"):
            self.assertAlmostEqual(h200[k], TRUTH[k], delta=0.1, msg=k)
        self.assertIs(written["measured"], True)
        self.assertEqual(written["date"], "2026-01-02")
        self.assertEqual(written["card"], "synthetic: sim PerfModel on H200")
        self.assertIn("fit_calibration.py", h200["notes"])
        # Fields not fitted, and every other GPU, unchanged.
        for k in ("nvlink_efficiency", "tp_allreduce_latency_us"):
            self.assertEqual(h200[k], self.base["gpus"]["H200"][k])
        for gpu, entry in self.base["gpus"].items():
            if gpu != "H200":
                self.assertEqual(written["gpus"][gpu], entry, gpu)
        # The compiled-in copy is the same document, and the file is formatted like the original.
        self.assertEqual(builtin_json(read(self.cal_cc)), written)
        self.assertEqual(read(self.cal_json), json.dumps(written, indent=2, ensure_ascii=False) + "\n")

    def test_noisy_measurements_fit_within_target(self):
        with open(self.report) as f:
            rep = json.load(f)
        for i, row in enumerate(rep["rows"]):
            row["ms"] *= 1 + 0.03 * math.sin(1.7 * i + 0.3)  # ±3%, deterministic
            row["sim_ms"] = None  # no longer the model's own prediction
        noisy = os.path.join(self.tmp, "noisy.json")
        with open(noisy, "w") as f:
            json.dump(rep, f)
        _, gpu, peak, bw, rows = self.tool.load_report(noisy, None)
        self.assertEqual(gpu, "H200")
        start = self.base["gpus"]["H200"]
        fitted, _ = self.tool.fit([(w, t) for _, w, t in rows], start, peak, bw)
        errors = [abs(self.tool.predict_s(w, fitted, peak, bw) - t) / t for _, w, t in rows]
        self.assertLess(max(errors), 0.05)
        self.assertAlmostEqual(fitted["hbm_efficiency"], TRUTH["hbm_efficiency"], delta=0.05)
        self.assertAlmostEqual(fitted["matmul_efficiency"], TRUTH["matmul_efficiency"], delta=0.05)

    def test_too_few_rows_keep_current_values(self):
        with open(self.report) as f:
            rep = json.load(f)
        # One decode context and one prefill length: overhead per sequence is still determined
        # (batch varies), attention efficiency is not.
        rep["rows"] = [r for r in rep["rows"]
                       if r["name"] in ("decode:1:1024", "decode:8:1024", "decode:64:1024",
                                        "prefill:8192")]
        few = os.path.join(self.tmp, "few.json")
        with open(few, "w") as f:
            json.dump(rep, f)
        _, _, peak, bw, rows = self.tool.load_report(few, None)
        start = self.base["gpus"]["H200"]
        fitted, notes = self.tool.fit([(w, t) for _, w, t in rows], start, peak, bw)
        self.assertEqual(fitted["attention_efficiency"], start["attention_efficiency"])
        self.assertTrue(any("attention_efficiency" in n for n in notes))

    def test_refuses_bad_reports(self):
        skipped = os.path.join(self.tmp, "skipped.json")
        with open(skipped, "w") as f:
            json.dump({"tool": "engine_bench", "skipped": "no CUDA GPU", "rows": []}, f)
        proc = self.run_tool(report=skipped)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("measured nothing", proc.stderr)

        # A report whose C++ predictions this tool cannot reproduce: the models diverged.
        with open(self.report) as f:
            rep = json.load(f)
        rep["rows"][0]["sim_ms"] *= 1.01
        diverged = os.path.join(self.tmp, "diverged.json")
        with open(diverged, "w") as f:
            json.dump(rep, f)
        proc = self.run_tool("--date", "2026-01-02", report=diverged)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("perf_model.cc", proc.stderr)
        self.assertEqual(read(self.cal_json), self.repo_before[0])  # nothing written


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--sim-predict", required=True)
    ap.add_argument("--source-dir", required=True)
    ARGS, rest = ap.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
