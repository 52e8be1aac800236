"""The comparison's report: Markdown tables of times, throughput and ratios, the targets, the
errors against float64, and plots of throughput against vocabulary size."""

import math

from reference import OPS

CRATE = "sigsoftmax"
COPY = "copy"

# Peer columns, in this order, for the ops each one implements.
PEER_LABELS = ("torch", "torch.compile", "jax.jit", "onnxruntime")

COLORS = {
    CRATE: "tab:red",
    COPY: "black",
    "torch": "tab:blue",
    "torch.compile": "tab:orange",
    "jax.jit": "tab:green",
    "onnxruntime": "tab:purple",
}

OP_TITLES = {
    "softmax": "Plain softmax forward (baseline)",
    "forward": "sigsoftmax forward (peers: softmax(z + logsigmoid(z)))",
    "backward": "sigsoftmax backward, given z, y and dy (peers: autograd / VJP of the composed forward)",
    "cross-entropy": "sigsoftmax cross-entropy, mean loss and dz (peers: composed forward, then cross-entropy)",
    "softmax-cross-entropy": "Plain softmax cross-entropy, mean loss and dz (baseline)",
}


class Index:
    """Measurements looked up by (implementation, op, dtype, rows, cols, threads)."""

    def __init__(self, records, threads):
        self.threads = threads
        self.records = {}
        for record in records:
            key = (record["implementation"], record["op"], record["dtype"], record["rows"],
                   record["cols"], record["threads"])
            self.records[key] = record

    def get(self, implementation, op, dtype, rows, cols, threads=None):
        threads = self.threads if threads is None else threads
        return self.records.get((implementation, op, dtype, rows, cols, threads))

    def median_ms(self, *key, threads=None, field="median_ms"):
        """Return the record's median time, or with field="min_ms" its fastest round."""
        record = self.get(*key, threads=threads)
        if record is None or record.get(field) is None:
            return None
        return record[field]


def format_ms(ms):
    if ms is None:
        return "n/a"
    digits = max(0, 2 - int(math.floor(math.log10(ms)))) if ms > 0 else 3
    return f"{ms:.{digits}f}"


def format_ratio(ratio):
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def shapes_of(records):
    shapes = sorted({(r["rows"], r["cols"]) for r in records}, key=lambda s: (s[1], s[0]))
    return shapes


def dtypes_of(records):
    return [d for d in ("f32", "bf16") if any(r["dtype"] == d for r in records)]


def op_table(index, op, dtypes, shapes, scaling_threads):
    """Return the Markdown table of one op: the crate's time, throughput and fraction of the
    memory limit, its 1-thread time, and each peer's time with its ratio to the crate's."""
    labels = [
        label for label in PEER_LABELS
        if any(index.get(label, op, d, r, c) for d in dtypes for r, c in shapes)
    ]
    header = ["dtype", "shape", f"{CRATE} ms", "GB/s", "of limit"]
    if scaling_threads:
        header.append(f"{CRATE} {scaling_threads} thread ms (speedup)")
    header += [f"{label} ms (vs {CRATE})" for label in labels]
    header.append("limit GB/s")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for dtype in dtypes:
        for rows, cols in shapes:
            crate = index.get(CRATE, op, dtype, rows, cols)
            crate_ms = crate and crate.get("median_ms")
            cells = [dtype, f"{rows}x{cols}", format_ms(crate_ms)]
            gb = crate and crate.get("gb_per_s")
            copy_gb = limit_gb_per_s(index, op, dtype, rows, cols)
            cells.append(f"{gb:.1f}" if gb else "n/a")
            cells.append(f"{gb / copy_gb:.0%}" if gb and copy_gb else "n/a")
            if scaling_threads:
                single = index.median_ms(CRATE, op, dtype, rows, cols, threads=scaling_threads)
                speedup = single / crate_ms if single and crate_ms else None
                cells.append(f"{format_ms(single)} ({format_ratio(speedup)})")
            for label in labels:
                peer_ms = index.median_ms(label, op, dtype, rows, cols)
                ratio = peer_ms / crate_ms if peer_ms and crate_ms else None
                cells.append(f"{format_ms(peer_ms)} ({format_ratio(ratio)})" if peer_ms else "n/a")
            cells.append(f"{copy_gb:.1f}" if copy_gb else "n/a")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def limit_gb_per_s(index, op, dtype, rows, cols):
    """Return the faster of the two memory passes timed with this case: torch `copy_` of z,
    and the pass `sigsoftmax bench` times beside the op (a copy, or an xor of z, y and dy for
    backward). Either may be missing."""
    copy = index.get(COPY, COPY, dtype, rows, cols)
    crate = index.get(CRATE, op, dtype, rows, cols)
    candidates = [copy and copy.get("gb_per_s"), crate and crate.get("crate_limit_gb_per_s")]
    candidates = [value for value in candidates if value]
    return max(candidates) if candidates else None


# (name, crate op, peer op, peer label or None for the fastest plain softmax peer, minimum ratio)
TARGETS = (
    ("forward at least as fast as the fastest plain softmax peer", "forward", "softmax", None, 1.0),
    ("forward at least as fast as onnxruntime Softmax", "forward", "softmax", "onnxruntime", 1.0),
    ("forward at least 4x faster than torch.compile composed", "forward", "forward", "torch.compile", 4.0),
    ("backward at least 1.5x faster than torch.compile composed", "backward", "backward", "torch.compile", 1.5),
    ("cross-entropy at least 1.5x faster than torch.compile composed", "cross-entropy", "cross-entropy", "torch.compile", 1.5),
)


def target_ratios(index, target, dtype, shapes, field):
    """Return [(shape, ratio, peer label)] for one target: peer time over crate time."""
    _, crate_op, peer_op, label, _ = target
    ratios = []
    for rows, cols in shapes:
        crate_ms = index.median_ms(CRATE, crate_op, dtype, rows, cols, field=field)
        candidates = [label] if label else list(PEER_LABELS)
        times = [(index.median_ms(peer, peer_op, dtype, rows, cols, field=field), peer)
                 for peer in candidates]
        times = [(ms, peer) for ms, peer in times if ms]
        if crate_ms and times:
            peer_ms, peer = min(times)
            ratios.append(((rows, cols), peer_ms / crate_ms, peer))
    return ratios


def targets_table(index, dtypes, shapes, field="median_ms"):
    """Return the Markdown table of the performance targets, from the median times or, with
    field="min_ms", from each implementation's fastest round."""
    header = ["target", "dtype", "shapes met", "lowest ratio (shape)", "median ratio",
              "32x50257", "8x256000"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for target in TARGETS:
        name, _, _, _, minimum = target
        for dtype in dtypes:
            ratios = target_ratios(index, target, dtype, shapes, field)
            if not ratios:
                lines.append(f"| {name} | {dtype} | no peer measured | | | | |")
                continue
            met = sum(ratio >= minimum for _, ratio, _ in ratios)
            worst = min(ratios, key=lambda item: item[1])
            ordered = sorted(ratio for _, ratio, _ in ratios)
            median = ordered[len(ordered) // 2] if len(ordered) % 2 else (
                0.5 * (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]))
            by_shape = {shape: (ratio, peer) for shape, ratio, peer in ratios}

            def at(shape):
                if shape not in by_shape:
                    return "n/a"
                ratio, peer = by_shape[shape]
                return format_ratio(ratio) + ("" if target[3] else f" ({peer})")

            worst_shape = f"{worst[0][0]}x{worst[0][1]}"
            lines.append(
                f"| {name} | {dtype} | {met}/{len(ratios)} | {format_ratio(worst[1])} "
                f"({worst_shape}) | {format_ratio(median)} | {at((32, 50257))} | {at((8, 256000))} |"
            )
    return "\n".join(lines)


def scaling_table(index, dtypes, shapes, scaling_threads):
    """Return the crate's speedup from `scaling_threads` to the main thread count per op."""
    header = ["op", "dtype", "lowest speedup (shape)", "median speedup", "highest speedup",
              "median speedup of the fastest rounds"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for op in OPS:
        for dtype in dtypes:
            speedups = []
            best_speedups = []
            for rows, cols in shapes:
                key = (CRATE, op, dtype, rows, cols)
                many = index.median_ms(*key)
                single = index.median_ms(*key, threads=scaling_threads)
                if many and single:
                    speedups.append((single / many, f"{rows}x{cols}"))
                many = index.median_ms(*key, field="min_ms")
                single = index.median_ms(*key, threads=scaling_threads, field="min_ms")
                if many and single:
                    best_speedups.append(single / many)
            if not speedups:
                continue
            speedups.sort()
            best_speedups.sort()
            median = speedups[len(speedups) // 2][0]
            best = best_speedups[len(best_speedups) // 2] if best_speedups else None
            lines.append(
                f"| {op} | {dtype} | {format_ratio(speedups[0][0])} ({speedups[0][1]}) | "
                f"{format_ratio(median)} | {format_ratio(speedups[-1][0])} ({speedups[-1][1]}) | "
                f"{format_ratio(best)} |"
            )
    return "\n".join(lines)


def error_table(records, dtypes):
    """Return the max error relative to the row max, over all checked shapes, per
    implementation, op and dtype."""
    worst = {}
    for record in records:
        error = record.get("error")
        if error is None:
            continue
        key = (record["implementation"], record["op"], record["dtype"])
        worst[key] = error if math.isnan(error) else max(worst.get(key, 0.0), error)
    implementations = [CRATE] + list(PEER_LABELS)
    columns = [(op, dtype) for op in OPS for dtype in dtypes]
    header = ["implementation"] + [f"{op} {dtype}" for op, dtype in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for implementation in implementations:
        cells = [implementation]
        for op, dtype in columns:
            value = worst.get((implementation, op, dtype))
            cells.append("n/a" if value is None else f"{value:.1e}")
        if any(cell != "n/a" for cell in cells[1:]):
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def unavailable_list(records):
    """Return one Markdown bullet per implementation and reason it was not measured, with the
    ops, dtypes and number of cases it applies to."""
    grouped = {}
    for record in records:
        reason = record.get("unavailable")
        if reason:
            entry = grouped.setdefault((record["implementation"], reason), [set(), set(), 0])
            entry[0].add(record["op"])
            entry[1].add(record["dtype"])
            entry[2] += 1
    lines = []
    for (implementation, reason), (ops, dtypes, count) in grouped.items():
        ops_text = ", ".join(op for op in OPS if op in ops)
        lines.append(f"- {implementation} ({ops_text}; {', '.join(sorted(dtypes))}; "
                     f"{count} cases): {reason}")
    return "\n".join(lines)


def markdown(records, meta):
    """Return the full report as Markdown."""
    threads = meta["threads"]
    scaling = meta.get("scaling_threads")
    index = Index(records, threads)
    dtypes = dtypes_of(records)
    shapes = shapes_of([r for r in records if r["implementation"] == CRATE])
    parts = [
        f"Device: {meta['device']}, {threads} threads. Times are medians over {meta['rounds']} "
        f"interleaved rounds of each round's median call. `vs {CRATE}` is the peer's time "
        f"over this crate's (above 1: this crate is faster). `limit GB/s` is the faster of "
        f"two memory passes timed in the same rounds: a torch `copy_` of z, and the pass "
        f"`sigsoftmax bench` runs beside the op (a copy of z, or for backward an xor of z, y "
        f"and dy into dz). `of limit` is this crate's GB/s over it.",
    ]
    for op in OPS:
        parts.append(f"### {OP_TITLES[op]}\n\n{op_table(index, op, dtypes, shapes, scaling)}")
    parts.append(
        f"### Targets (peer time over {CRATE} time, from the median times)\n\n"
        f"{targets_table(index, dtypes, shapes)}"
    )
    parts.append(
        f"### Targets from each implementation's fastest round\n\n"
        f"Less sensitive to other processes on the machine than the medians.\n\n"
        f"{targets_table(index, dtypes, shapes, field='min_ms')}"
    )
    if scaling:
        parts.append(
            f"### {CRATE} speedup from {scaling} to {threads} threads\n\n"
            f"{scaling_table(index, dtypes, shapes, scaling)}"
        )
    parts.append(
        "### Max error against float64, relative to the row max\n\n"
        "For the cross-entropy ops, the error of dz.\n\n" + error_table(records, dtypes)
    )
    unavailable = unavailable_list(records)
    if unavailable:
        parts.append("### Not measured\n\n" + unavailable)
    return "\n\n".join(parts) + "\n"


def limit_points(index, op, dtype, rows):
    vocabularies = sorted({key[4] for key in index.records if key[3] == rows})
    points = [(cols, limit_gb_per_s(index, op, dtype, rows, cols)) for cols in vocabularies]
    return [(cols, value) for cols, value in points if value]


def plot(records, meta, rows, path):
    """Plot GB/s against vocabulary size for shapes with `rows` rows: one panel per op and
    dtype, one line per implementation, the copy limit dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = meta["threads"]
    scaling = meta.get("scaling_threads")
    dtypes = dtypes_of(records)
    index = Index(records, threads)
    figure, axes = plt.subplots(
        len(dtypes), len(OPS), figsize=(4.2 * len(OPS), 3.6 * len(dtypes)), squeeze=False
    )
    lines = [(CRATE, threads, "-", "o"), (COPY, threads, "--", None)]
    if scaling:
        lines.append((CRATE, scaling, ":", "o"))
    lines += [(label, threads, "-", ".") for label in PEER_LABELS]
    for row, dtype in enumerate(dtypes):
        for column, op in enumerate(OPS):
            axis = axes[row][column]
            for implementation, line_threads, style, marker in lines:
                if implementation == COPY:
                    points = limit_points(index, op, dtype, rows)
                    if points:
                        axis.plot(*zip(*points), linestyle=style, color=COLORS[COPY],
                                  label="memory limit (faster of the two passes)")
                    continue
                record_op = op
                points = sorted(
                    (r["cols"], r["gb_per_s"]) for r in records
                    if r["implementation"] == implementation and r["op"] == record_op
                    and r["dtype"] == dtype and r["rows"] == rows
                    and r["threads"] == line_threads and r.get("gb_per_s")
                )
                if not points:
                    continue
                name = implementation
                if implementation == CRATE:
                    name = f"{CRATE} ({line_threads} thread{'s' if line_threads > 1 else ''})"
                axis.plot(*zip(*points), linestyle=style, marker=marker, label=name,
                          color=COLORS[implementation])
            axis.set_xscale("log")
            vocabularies = sorted({r["cols"] for r in records if r["rows"] == rows})
            axis.set_xticks(vocabularies, [str(cols) for cols in vocabularies])
            axis.minorticks_off()
            axis.set_title(f"{op}, {dtype}, {rows} rows", fontsize=9)
            axis.set_xlabel("vocabulary size (cols)", fontsize=8)
            axis.set_ylabel("GB/s", fontsize=8)
            axis.tick_params(labelsize=7)
            axis.grid(True, alpha=0.3)
            axis.set_ylim(bottom=0)
    handles, names = [], []
    for axis in axes.flat:
        for handle, name in zip(*axis.get_legend_handles_labels()):
            if name not in names:
                handles.append(handle)
                names.append(name)
    if names:
        figure.legend(handles, names, loc="lower center", ncol=len(names), fontsize=8)
    figure.suptitle(
        f"Throughput (bytes read and written per second), {meta['device']}, {threads} threads",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0.06, 1, 0.96))
    figure.savefig(path, dpi=90)
    plt.close(figure)
