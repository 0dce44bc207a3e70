#!/usr/bin/env bash
# Set up dcsim in a virtual environment and run the demo or the tests.
#   bash run.sh demo [dcsim demo options]   train, convert, calibrate, select th_c, report (digits)
#   bash run.sh test [pytest options]       the test suite
# Environment: DCSIM_VENV (default .venv), DCSIM_TORCH (default torch==2.13.0; a CUDA machine can
# install its own torch first), DCSIM_CUDA (AUTO|ON|OFF: build the CUDA kernels).
set -euo pipefail
cd "$(dirname "$0")"
venv="${DCSIM_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "${DCSIM_TORCH:-torch==2.13.0}"
python -m pip install -q scikit-build-core pybind11 ninja "cmake>=3.24"
python -m pip install -q --no-build-isolation -e ".[test]"
python -c "import dcsim; print('dcsim', dcsim.__version__, 'kernels:', dcsim.backends())"
what="${1:-}"
shift || true
case "$what" in
  demo) exec dcsim demo "$@" ;;
  test)
    # SpikingJelly's op counter, the outside check of dcsim's SOP counts (tests/test_sops.py): its
    # own module needs torch and loguru only, so it goes in without the torchvision/torchaudio it lists.
    # Where the registry lacks them, that one test is skipped, and this says so.
    { python -c "import spikingjelly, loguru" 2>/dev/null \
      || { python -m pip install -q --no-deps "spikingjelly==2.0.0" && python -m pip install -q "loguru>=0.7,<1"; } 2>/dev/null; } \
      || echo "run.sh: SpikingJelly not installable here: tests/test_sops.py skips its comparison" >&2
    exec python -m pytest -q "$@" ;;
  *) echo "usage: bash run.sh demo|test [options]" >&2; exit 2 ;;
esac
