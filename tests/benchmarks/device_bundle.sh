#!/usr/bin/env bash
# Builds .devsite/site.tar.xz for the device check on a GPU machine that has no network and whose Python already
# holds torch (CUDA), numpy, pyarrow and the rest, but not Ray, gymnasium or MuJoCo (the device tool's nvidia-h200:
# Python 3.12; its package list is in ../.library/device/KINDS.md). The bundle: those three and what they import,
# at constraints.txt's versions, unpacked for CPython PYTHON_VERSION on x86-64 Linux and pruned to what a dynaray run
# imports (no Java, no RLlib/Serve/Data/Tune/Train, no dashboard web page); about 27 MB. Needs PyPI. Ray runs in
# its minimal form there (without `ray[default]`'s packages: no dashboard and no Prometheus export, which the device
# check does not use; its figures come from the run's own metrics.parquet and evals.parquet).
#
#   tests/benchmarks/device_bundle.sh [PYTHON_VERSION]      # default 3.12
#
# Then, on the machine (the device tool's `run` with carry [".devsite"]), in the repository's root:
#   python3 -c "import tarfile; tarfile.open('.devsite/site.tar.xz').extractall('/tmp/site', filter='fully_trusted')"
#   PYTHON=python3 PYTHONPATH=/tmp/site:$PWD tests/benchmarks/device_check.sh /tmp/dc
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${1:-3.12}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pinned() { grep -i "^$1==" constraints.txt || echo "$1"; }
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64)
for name in ray mujoco mujoco-core gymnasium farama-notifications glfw pyopengl jsonschema referencing \
            jsonschema-specifications rpds-py; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
        "${platforms[@]}" -d "$work/wheels" "$(pinned "$name")"
done
mkdir "$work/site"
for wheel in "$work"/wheels/*.whl; do
    unzip -q -o "$wheel" -d "$work/site"
done
(cd "$work/site/ray" && rm -rf jars rllib serve data tune train llm dashboard/client/build && find . -name '*.map' -delete)
mkdir -p .devsite
tar cf - -C "$work/site" . | xz -9 -T0 > .devsite/site.tar.xz
echo "device_bundle: .devsite/site.tar.xz, $(du -h .devsite/site.tar.xz | cut -f1), for CPython $py" >&2
