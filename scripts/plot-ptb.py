"""Plot the PTB sweep written by `cargo run --example ptb -- --json FILE`.

Left: validation perplexity against the hidden width d, softmax beside sigsoftmax.
Right: the singular values of each run's log-probability matrix, divided by the largest, with
the softmax bound d + 2 marked.

    python3 -m pip install -r scripts/plot-ptb-requirements.txt
    python3 scripts/plot-ptb.py results/ptb-sweep.jsonl results/ptb-sweep.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

COLORS = {"softmax": "tab:blue", "sigsoftmax": "tab:red"}


def main(source, target):
    with open(source, encoding="utf-8") as file:
        runs = [json.loads(line) for line in file if line.strip()]
    if not runs:
        sys.exit(f"plot-ptb: {source} contains no runs")

    figure, (perplexity_axes, spectrum_axes) = plt.subplots(1, 2, figsize=(12, 4.8))
    for activation, color in COLORS.items():
        points = sorted((run["d"], run["valid_ppl"]) for run in runs if run["activation"] == activation)
        if points:
            dims, perplexities = zip(*points)
            perplexity_axes.plot(dims, perplexities, "o-", color=color, label=activation)
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
    for run in runs:
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
    spectrum_axes.set_title(f"log-probability matrix, {first['rank_contexts']} validation contexts x vocab")
    spectrum_axes.set_ylim(1e-17, 2)
    spectrum_axes.legend(fontsize=7, ncol=2)
    spectrum_axes.grid(alpha=0.3)

    figure.tight_layout()
    figure.savefig(target, dpi=110)
    print(f"plot-ptb: wrote {target}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: plot-ptb.py SWEEP.jsonl OUTPUT.png")
    main(sys.argv[1], sys.argv[2])
