"""Plot the PTB sweeps written by `cargo run --example ptb -- --json FILE`.

Left: validation perplexity against the hidden width d, softmax beside sigsoftmax. With several
seeds, the line joins the means and each seed is a dot.
Right: the singular values of the log-probability matrix of each run of the lowest seed,
divided by the largest, with the softmax bound d + 2 marked.
It also prints a Markdown table of the validation perplexities over the seeds.

    python3 -m pip install -r scripts/plot-ptb-requirements.txt
    python3 scripts/plot-ptb.py results/ptb-sweep.jsonl [MORE.jsonl ...] results/ptb-sweep.png
"""

import json
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

COLORS = {"softmax": "tab:blue", "sigsoftmax": "tab:red"}


def main(sources, target):
    runs = []
    for source in sources:
        with open(source, encoding="utf-8") as file:
            runs += [json.loads(line) for line in file if line.strip()]
    if not runs:
        sys.exit(f"plot-ptb: {', '.join(sources)} contain no runs")
    seeds = sorted({run["seed"] for run in runs})

    figure, (perplexity_axes, spectrum_axes) = plt.subplots(1, 2, figsize=(12, 4.8))
    for activation, color in COLORS.items():
        activation_runs = [run for run in runs if run["activation"] == activation]
        if not activation_runs:
            continue
        dims = sorted({run["d"] for run in activation_runs})
        means = [statistics.mean(run["valid_ppl"] for run in activation_runs if run["d"] == d) for d in dims]
        counts = {sum(1 for run in activation_runs if run["d"] == d) for d in dims}
        if counts == {1}:
            label = activation
        elif len(counts) == 1:
            label = f"{activation}, mean of {counts.pop()} seeds"
        else:
            label = f"{activation}, mean of the seeds run at each d"
        perplexity_axes.plot(dims, means, "-", color=color, label=label)
        perplexity_axes.plot(
            [run["d"] for run in activation_runs], [run["valid_ppl"] for run in activation_runs], "o", color=color, alpha=0.6
        )
    perplexity_axes.set_xscale("log", base=2)
    perplexity_axes.set_xlabel("hidden width d")
    perplexity_axes.set_ylabel("validation perplexity")
    first = runs[0]
    perplexity_axes.set_title(
        f"PTB, 1-layer LSTM, {first['windows_per_epoch_trained']} windows of "
        f"{first['batch_size']} x {first['bptt']} tokens"
    )
    perplexity_axes.legend()
    perplexity_axes.grid(alpha=0.3)

    dims = sorted({run["d"] for run in runs})
    for run in (run for run in runs if run["seed"] == seeds[0]):
        values = run["singular_values"]
        if not values:
            continue
        shade = 0.35 + 0.65 * dims.index(run["d"]) / max(len(dims) - 1, 1)
        relative = [value / values[0] for value in values]
        spectrum_axes.semilogy(
            range(1, len(relative) + 1),
            relative,
            color=COLORS[run["activation"]],
            alpha=shade,
            label=f"{run['activation']} d={run['d']}",
        )
    for d in dims:
        spectrum_axes.axvline(d + 2, color="gray", linewidth=0.6, linestyle=":")
    spectrum_axes.set_xlabel("index k (dotted: d + 2, the softmax rank bound with a bias)")
    spectrum_axes.set_ylabel("sigma_k / sigma_1")
    spectrum_axes.set_title(
        f"log-probability matrix, {first['rank_contexts']} validation contexts x vocab, seed {seeds[0]}"
    )
    spectrum_axes.set_ylim(1e-17, 2)
    spectrum_axes.legend(fontsize=7, ncol=2)
    spectrum_axes.grid(alpha=0.3)

    figure.tight_layout()
    figure.savefig(target, dpi=110)
    print(f"plot-ptb: wrote {target}")
    print_summary(runs)


def print_summary(runs):
    """Prints a Markdown table of validation perplexity per d over the seeds, and the change
    from softmax to sigsoftmax within each seed (negative: sigsoftmax is lower)."""
    by_key = {(run["d"], run["activation"], run["seed"]): run["valid_ppl"] for run in runs}
    print("| d | seeds | softmax valid ppl, mean (range) | sigsoftmax valid ppl, mean (range) "
          "| sigsoftmax vs softmax, same seed, mean (range) |")
    print("| ---: | ---: | --- | --- | --- |")
    for d in sorted({run["d"] for run in runs}):
        seeds = sorted(seed for (dim, activation, seed) in by_key
                       if dim == d and activation == "softmax" and (d, "sigsoftmax", seed) in by_key)
        if not seeds:
            continue
        softmax = [by_key[(d, "softmax", seed)] for seed in seeds]
        sigsoftmax = [by_key[(d, "sigsoftmax", seed)] for seed in seeds]
        change = [100.0 * (b / a - 1.0) for a, b in zip(softmax, sigsoftmax)]
        print(f"| {d} | {len(seeds)} | {spread(softmax, '.1f')} | {spread(sigsoftmax, '.1f')} "
              f"| {spread(change, '+.1f', '%')} |")


def spread(values, spec, unit=""):
    """Formats the mean of `values` and, for more than one value, their range."""
    mean = format(statistics.mean(values), spec) + unit
    if len(values) == 1:
        return mean
    return f"{mean} ({format(min(values), spec)}{unit} to {format(max(values), spec)}{unit})"


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: plot-ptb.py SWEEP.jsonl [MORE.jsonl ...] OUTPUT.png")
    main(sys.argv[1:-1], sys.argv[-1])
