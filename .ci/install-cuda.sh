#!/usr/bin/env bash
# Installs what `cargo build --features cuda` needs, skipping what is already there, and prints
# the environment to export.
#
#   bash .ci/install-cuda.sh [13.0|11.8]
#
# 13.0 (default): NVIDIA's compiler wheels from PyPI, pinned to one release (mixed releases fail
#   with "Unsupported .version"), into .venv-cuda/ inside the clone, with the CCCL headers
#   (cuda_fp16.h includes <nv/target>). No root needed for this part.
# 11.8: Debian 12's nvidia-cuda-toolkit from the non-free component, and g++-11 as nvcc's host
#   compiler (CUDA 11.8 rejects gcc 12). Needs root.
# Both: libclang through apt when it is missing, since bindgen loads it at build time.
#
# Prints `export NVCC=...` (and SIGSOFTMAX_CUDA_CCBIN for 11.8) on the last lines.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
version="${1:-13.0}"

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: installing $* needs root (apt-get)" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

apt_updated=0
apt_update_once() {
    if [ "$apt_updated" -eq 0 ]; then
        apt-get update -q >/dev/null
        apt_updated=1
    fi
}

# bindgen (through clang-sys) loads libclang.so from the LLVM folders or the system library path.
# libclang-cpp.so, which some packages install alone, is a different library and does not count.
if ! compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null &&
    ! compgen -G '/usr/lib/x86_64-linux-gnu/libclang-[0-9]*.so*' >/dev/null; then
    echo "installing libclang-dev for bindgen" >&2
    apt_update_once
    apt_install libclang-dev
fi

case "$version" in
13.0)
    venv="$root/.venv-cuda"
    nvcc="$venv/lib/python3*/site-packages/nvidia/cu13/bin/nvcc"
    cccl="$venv/lib/python3*/site-packages/nvidia/cu13/include/cccl/nv/target"
    # shellcheck disable=SC2086 # the globs pick the venv's Python version
    if ! ls $nvcc $cccl >/dev/null 2>&1; then
        echo "installing the CUDA 13.0 compiler wheels into $venv" >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check \
            nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
            nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
    fi
    # shellcheck disable=SC2086
    nvcc="$(ls $nvcc)"
    "$nvcc" --version | tail -n 2 >&2
    echo "export NVCC=$nvcc"
    ;;
11.8)
    if ! command -v /usr/bin/nvcc >/dev/null || ! command -v g++-11 >/dev/null; then
        echo "installing nvidia-cuda-toolkit (CUDA 11.8) and g++-11 from Debian" >&2
        sources=/etc/apt/sources.list.d/debian-non-free.sources
        if ! grep -rqs "non-free" /etc/apt/sources.list /etc/apt/sources.list.d/; then
            . /etc/os-release
            cat >"$sources" <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: $VERSION_CODENAME $VERSION_CODENAME-updates
Components: contrib non-free non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
            apt_updated=0
        fi
        apt_update_once
        apt_install nvidia-cuda-toolkit g++-11
    fi
    /usr/bin/nvcc --version | tail -n 2 >&2
    echo "export NVCC=/usr/bin/nvcc SIGSOFTMAX_CUDA_CCBIN=g++-11"
    ;;
*)
    echo "error: unknown CUDA version '$version'; use 13.0 or 11.8" >&2
    exit 2
    ;;
esac
