#!/usr/bin/env bash
# Installs every system dependency of mixtrain from Debian's packages, plus the optional
# Python reference libraries (ml_dtypes, safetensors, tensorboard) for /usr/bin/python3. Idempotent and
# quiet when everything is already there. The sanitizer builds (scripts/sanitize.sh, fuzz.sh,
# tsan.sh) need clang, its runtimes (libclang-rt-14-dev: ASan, UBSan, TSan, libFuzzer), LLVM's
# OpenMP (libomp-dev: libomp and the archer tool for TSan) and llvm (llvm-symbolizer, which
# turns the addresses in sanitizer and libFuzzer reports into file:line). clang-format (14)
# checks the formatting of the sources (scripts/format.sh, a ctest test). pkgconf: the install
# check links a program through mixtrain.pc.
set -euo pipefail

PKGS=(build-essential cmake libgtest-dev libgmock-dev libbenchmark-dev
      libdnnl-dev ocl-icd-opencl-dev libcli11-dev libfmt-dev nlohmann-json3-dev zlib1g-dev
      libopenmpi-dev openmpi-bin dataset-fashion-mnist
      jargon-text python3-numpy python3-matplotlib python3-pip python3-torch
      clang clang-format libclang-rt-14-dev libomp-dev llvm pkgconf)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Optional references for tests and export checks. "numpy<2" keeps Debian's numpy, which
# Debian's torch is built against.
if ! /usr/bin/python3 -c "import ml_dtypes, safetensors" 2>/dev/null; then
  echo "setup: installing ml_dtypes and safetensors for /usr/bin/python3"
  /usr/bin/python3 -m pip install -q --break-system-packages --disable-pip-version-check \
    "ml_dtypes<0.5" "numpy<2" safetensors >/dev/null 2>&1 ||
    echo "setup: warning: pip install of ml_dtypes/safetensors failed; their optional tests will skip"
fi
# TensorBoard's own reader, for the test that reads the event files back (it skips, visibly,
# without it).
if ! /usr/bin/python3 -c "import tensorboard" 2>/dev/null; then
  echo "setup: installing tensorboard for /usr/bin/python3"
  /usr/bin/python3 -m pip install -q --break-system-packages --disable-pip-version-check \
    "numpy<2" tensorboard >/dev/null 2>&1 ||
    echo "setup: warning: pip install of tensorboard failed; Tensorboard.*ReadsBack tests will skip"
fi
