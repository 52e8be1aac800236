#!/usr/bin/env python3
"""Compare this crate's sigsoftmax with PyTorch, torch.compile, JAX and onnxruntime on the
same shapes and dtypes, in one run, interleaved.

For each dtype and shape, every implementation is prepared (and compiled) once and checked
against a float64 reference on the same random logits. Then it is timed in rounds. Each round
times every implementation once, in an order rotated from round to round, so load from other
processes is spread over all of them. The reported time is the median over rounds of each
round's median call. This crate is timed by its own `sigsoftmax bench --json`, run once per
round. The limit is the faster of two memory passes timed in the same rounds: a torch `copy_`
of z, and the pass that `sigsoftmax bench` times beside the op.

Writes results.json, results.md and throughput-rows*.png to --out-dir.

    compare/.venv/bin/python compare/compare.py --threads 2
"""

import argparse
import datetime
import gc
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
import sigsoftmax_cli  # noqa: E402
from peer import PeerUnavailable  # noqa: E402
from reference import OPS, bytes_moved, make_inputs, reference, relative_error  # noqa: E402
from timing import RoundSettings, Timings, time_round  # noqa: E402

VOCABULARIES = (32000, 50257, 128256, 256000)
ROWS = (1, 8, 32)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="device every implementation runs on (default: cpu)")

    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="CPU threads of every implementation (default: all cores)")
    parser.add_argument("--scaling-threads", type=int, default=1,
                        help="also time this crate with this many threads, for the scaling "
                             "line; 0 turns it off (default: 1)")

    parser.add_argument("--dtypes", default="f32,bf16", help="comma-separated: f32, bf16")
    parser.add_argument("--cols", default=",".join(map(str, VOCABULARIES)),
                        help="comma-separated vocabulary sizes (default: %(default)s)")
    parser.add_argument("--rows", default=",".join(map(str, ROWS)),
                        help="comma-separated row counts (default: %(default)s)")

    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (default: 5)")
    parser.add_argument("--round-time", type=float, default=0.03,
                        help="minimum seconds of timed calls per implementation and round")

    parser.add_argument("--binary", help="the sigsoftmax binary (default: "
                        "target/release/sigsoftmax, built with cargo if missing)")
    parser.add_argument("--skip", default="",
                        help="comma-separated backends to leave out: sigsoftmax, torch, "
                             "torch.compile, jax, onnxruntime")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the correctness check against float64")
    parser.add_argument("--compile-dynamic", action="store_true",
                        help="let torch.compile use dynamic shapes (one compile for many "
                             "shapes) instead of compiling each shape")
    parser.add_argument("--report-from",
                        help="skip measuring: rewrite the report and plots from this "
                             "results.json")
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"),
                        help="folder for results.json, results.md and the plots")

    args = parser.parse_args(argv)
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    args.cols = [int(c) for c in args.cols.split(",") if c]
    args.rows = [int(r) for r in args.rows.split(",") if r]
    args.skip = {s for s in args.skip.split(",") if s}
    for dtype in args.dtypes:
        if dtype not in ("f32", "bf16"):
            parser.error(f"invalid dtype {dtype!r}: use f32 or bf16")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def command_output(command):
    try:
        return subprocess.run(command, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def machine_description(device):
    """Return the CPU model, cores, memory, load and, on a GPU, the GPU's name."""
    model = ""
    for line in command_output(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    memory_kib = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    description = {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 2**20, 1),
        "load_average": os.getloadavg(),
        "openblas_env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                         if k in os.environ},
    }
    if device == "cuda":
        description["gpu"] = command_output(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    return description


def repository_state():
    repo = sigsoftmax_cli.REPO
    commit = command_output(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    changed = command_output(["git", "-C", str(repo), "status", "--porcelain", "--", "src"])
    return {"commit": commit, "uncommitted_changes_in_src": bool(changed)}


class Backends:
    """The peer implementations that loaded, and why the others did not."""

    def __init__(self, args):
        self.peers = []
        self.versions = {"python": platform.python_version(), "numpy": np.__version__}
        self.unavailable = {}
        # JAX reads its thread flags at import, so it is configured before anything else.
        if "jax" not in args.skip:
            self.load("jax.jit", lambda: self.load_jax(args))
        if not {"torch", "torch.compile"} <= args.skip:
            self.load("torch", lambda: self.load_torch(args))
        if "onnxruntime" not in args.skip:
            self.load("onnxruntime", lambda: self.load_onnx(args))

    def load(self, name, loader):
        try:
            loader()
        except PeerUnavailable as error:
            self.unavailable[name] = str(error)
            print(f"{name} unavailable: {error}", file=sys.stderr)
        except Exception as error:  # noqa: BLE001: one broken peer must not stop the others.
            lines = traceback.format_exception_only(type(error), error)
            self.unavailable[name] = f"failed to load: {lines[-1].strip()}"
            print(f"{name} failed to load: {lines[-1].strip()}", file=sys.stderr)

    def add(self, backend, skip=()):
        self.versions.update(backend.versions())
        self.peers += [peer for peer in backend.peers() if peer.label not in skip]

    def load_jax(self, args):
        import peers_jax

        peers_jax.configure(args.device, args.threads)
        self.add(peers_jax.JaxPeers(args.device))

    def load_torch(self, args):
        import peers_torch

        self.add(peers_torch.TorchPeers(args.device, args.threads, args.compile_dynamic),
                 skip=args.skip)

    def load_onnx(self, args):
        import peers_onnx

        self.add(peers_onnx.OnnxPeers(args.device, args.threads))


class CrateRunner:
    """This crate's measurements: one `sigsoftmax bench` per thread count and activation per
    round, and `sigsoftmax run` for correctness."""

    def __init__(self, args, binary):
        self.binary = binary
        self.device = args.device
        self.thread_counts = [args.threads]
        if args.scaling_threads and args.scaling_threads != args.threads:
            self.thread_counts.append(args.scaling_threads)
        self.timing = {"warmup": 1, "iters": 3, "min_time": args.round_time}

    def jobs(self):
        """Return the bench invocations of one round as (threads, activation, crate ops)."""
        ops = ["forward", "softmax", "backward", "cross-entropy"]
        jobs = [(threads, "sigsoftmax", ops) for threads in self.thread_counts]
        # Softmax cross-entropy is only a baseline, so its scaling is not measured.
        jobs.append((self.thread_counts[0], "softmax", ["cross-entropy"]))
        return jobs

    @staticmethod
    def comparison_op(crate_op, activation):
        if crate_op == "cross-entropy" and activation == "softmax":
            return "softmax-cross-entropy"
        return crate_op

    def bench(self, job, inputs):
        threads, activation, ops = job
        return sigsoftmax_cli.bench(self.binary, ops, activation, inputs.dtype, inputs.rows,
                                    inputs.cols, threads, self.device, self.timing)


def check_errors(prepared, crate, inputs, records_by_key, no_check):
    """Compare every implementation's output with the float64 reference and store the error in
    its record."""
    if no_check:
        return
    references = {}

    def expected(op):
        if op not in references:
            references[op] = reference(op, inputs)
        return references[op]

    for key, (peer, entry) in prepared.items():
        if peer.op not in OPS:
            continue
        error, loss_error = relative_error(entry.result(), expected(peer.op))
        records_by_key[key].update(error=error, loss_error=loss_error)
    if crate is not None:
        results = sigsoftmax_cli.run_all(crate.binary, OPS, inputs, crate.device)
        for op, result in results.items():
            record = records_by_key[("sigsoftmax", op, crate.thread_counts[0])]
            if isinstance(result, Exception):
                record["check_failed"] = str(result)
                continue
            error, loss_error = relative_error(result, expected(op))
            record.update(error=error, loss_error=loss_error)


def new_record(implementation, op, inputs, threads):
    op_bytes = bytes_moved("forward" if op == "copy" else op, inputs.rows, inputs.cols,
                           inputs.dtype)
    return {"implementation": implementation, "op": op, "dtype": inputs.dtype,
            "rows": inputs.rows, "cols": inputs.cols, "threads": threads, "bytes": op_bytes,
            "timings": Timings()}


def run_case(inputs, backends, crate, args, settings):
    """Prepare, check and time every implementation on one case; return its records."""
    records = {}
    prepared = {}
    for peer in backends.peers:
        key = (peer.label, peer.op, args.threads)
        record = records[key] = new_record(peer.label, peer.op, inputs, args.threads)
        start = time.perf_counter()
        try:
            entry = peer.prepare(inputs)
            # The first call compiles (torch.compile, jax.jit), outside the timed rounds.
            entry.run()
        except PeerUnavailable as error:
            record["unavailable"] = str(error)
            continue
        except Exception as error:  # noqa: BLE001: a failing peer must not stop the comparison.
            lines = traceback.format_exception_only(type(error), error)
            record["unavailable"] = f"failed: {lines[-1].strip()}"
            continue
        record["prepare_s"] = time.perf_counter() - start
        prepared[key] = (peer, entry)

    if crate is not None:
        for threads, activation, ops in crate.jobs():
            for crate_op in ops:
                op = crate.comparison_op(crate_op, activation)
                records[("sigsoftmax", op, threads)] = new_record("sigsoftmax", op, inputs, threads)

    check_errors(prepared, crate, inputs, records, args.no_check)

    entries = [("peer", key) for key in prepared]
    if crate is not None:
        entries += [("crate", job) for job in crate.jobs()]
    failed_jobs = set()
    for round_index in range(args.rounds):
        shift = round_index % len(entries)
        for kind, item in entries[shift:] + entries[:shift]:
            if kind == "peer":
                _, entry = prepared[item]
                records[item]["timings"].rounds.append(time_round(entry.run, settings))
                continue
            if (item[0], item[1]) in failed_jobs:
                continue
            try:
                results = crate.bench(item, inputs)
            except sigsoftmax_cli.Unavailable as error:
                # A bench that failed once (no GPU support in this build, for example) is not
                # retried in the later rounds of this case.
                failed_jobs.add((item[0], item[1]))
                for crate_op in item[2]:
                    op = crate.comparison_op(crate_op, item[1])
                    records[("sigsoftmax", op, item[0])]["unavailable"] = str(error)
                continue
            for crate_op, result in results.items():
                record = records[("sigsoftmax", crate.comparison_op(crate_op, item[1]), item[0])]
                record["timings"].rounds.append(result["median_ms"] / 1e3)
                record.setdefault("crate_limit_gb_per_s", []).append(result["limit_gb_per_s"])
                if result["bytes"] != record["bytes"]:
                    record["crate_bytes"] = result["bytes"]
            time.sleep(settings.pause)
    return [summarize(record) for record in records.values()]


def summarize(record):
    timings = record.pop("timings")
    median = timings.median()
    if median is not None:
        record["median_ms"] = median * 1e3
        record["min_ms"] = timings.minimum() * 1e3
        record["rounds_ms"] = [seconds * 1e3 for seconds in timings.rounds]
        record["gb_per_s"] = record["bytes"] / median / 1e9
    limits = record.pop("crate_limit_gb_per_s", None)
    if limits:
        record["crate_limit_gb_per_s"] = float(np.median(limits))
    return record


def main(argv=None):
    args = parse_args(argv)
    if args.report_from:
        with open(args.report_from) as file:
            saved = json.load(file)
        write_report(saved["records"], saved["meta"], Path(args.out_dir))
        return
    if args.device == "cuda":
        # CPU thread counts do not apply to GPU kernels.
        args.scaling_threads = 0
    warnings.filterwarnings("ignore")
    started = time.time()
    meta = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": args.device,
        "threads": args.threads,
        "scaling_threads": args.scaling_threads or None,
        "rounds": args.rounds,
        "round_time_s": args.round_time,
        "machine": machine_description(args.device),
        "repository": repository_state(),
    }
    backends = Backends(args)
    crate = None
    if "sigsoftmax" not in args.skip:
        try:
            binary = sigsoftmax_cli.find_binary(args.binary, args.device)
            modified = datetime.datetime.fromtimestamp(
                binary.stat().st_mtime, datetime.timezone.utc
            ).strftime("%Y-%m-%d %H:%M UTC")
            meta["binary"] = {"path": str(binary), "modified": modified}
            # A private copy, so a rebuild of target/ during the run cannot mix two builds.
            private = Path(tempfile.mkdtemp(prefix="sigsoftmax-compare-bin-")) / binary.name
            shutil.copy2(binary, private)
            crate = CrateRunner(args, private)
            backends.versions["sigsoftmax"] = command_output([str(private), "--version"])
        except sigsoftmax_cli.Unavailable as error:
            backends.unavailable["sigsoftmax"] = str(error)
            print(f"sigsoftmax unavailable: {error}", file=sys.stderr)
    meta["versions"] = backends.versions
    meta["unavailable_backends"] = backends.unavailable

    settings = RoundSettings(min_time=args.round_time)
    records = []
    shapes = [(rows, cols) for cols in args.cols for rows in args.rows]
    for dtype in args.dtypes:
        for rows, cols in shapes:
            case_start = time.perf_counter()
            inputs = make_inputs(rows, cols, dtype)
            records += run_case(inputs, backends, crate, args, settings)
            gc.collect()
            print(f"{dtype} {rows}x{cols}: {time.perf_counter() - case_start:.1f} s",
                  file=sys.stderr)

    meta["machine"]["load_average_after"] = os.getloadavg()
    meta["duration_s"] = round(time.time() - started, 1)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.device == "cpu" else f"-{args.device}"
    with open(out_dir / f"results{suffix}.json", "w") as file:
        json.dump({"meta": meta, "records": records}, file, indent=1)
    write_report(records, meta, out_dir)
    print(f"done in {meta['duration_s']} s; results in {out_dir}", file=sys.stderr)


def write_report(records, meta, out_dir):
    """Write results.md and one throughput plot per row count into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if meta["device"] == "cpu" else f"-{meta['device']}"
    (out_dir / f"results{suffix}.md").write_text(report.markdown(records, meta))
    for rows in sorted({record["rows"] for record in records}):
        report.plot(records, meta, rows, out_dir / f"throughput{suffix}-rows{rows}.png")


if __name__ == "__main__":
    main()
