#!/usr/bin/env bash
# Downloads, here (where Debian's package registry is reachable), the .deb files of the build
# dependencies that a lent GPU machine may lack (it has nvcc, CMake, ninja, a C++ compiler and
# PyTorch, and no package registry) into .devdeps/ (ignored by git). The device tool carries the
# folder (`carry: [".devdeps"]`) and scripts/device_check.sh unpacks it there with dpkg -x into
# a prefix it points CMake and the loader at. No root needed, nothing installed here.
#
# The set: what CMakeLists.txt finds (oneDNN, fmt, CLI11, nlohmann-json, zlib; GoogleTest for
# the tests) with every dependency of those packages that is not part of the base system of a
# machine with a C++ toolchain (glibc, libgcc, libstdc++, libgomp, zlib's runtime). oneDNN's
# Debian build brings its OpenCL runtime in: the ICD loader and the headers its CMake package
# looks for. MPI is left out (OpenMPI's packages are large; the GPU machine has one GPU, so the
# device check builds with -DMIXTRAIN_MPI=OFF). The script checks the set is closed: a package
# with a non-base dependency outside it fails the run, naming both.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${DEVDEPS_DIR:-.devdeps}

PKGS=(libdnnl2 libdnnl-dev libfmt9 libfmt-dev libcli11-dev nlohmann-json3-dev zlib1g-dev
      libgtest-dev libgmock-dev googletest
      ocl-icd-libopencl1 ocl-icd-opencl-dev opencl-c-headers opencl-clhpp-headers)
# On every machine that can run a C++ compiler (and on the GPU machine's image).
BASE=(libc6 libc6-dev libc-dev libgcc-s1 libstdc++6 libgomp1 zlib1g debconf)

in_list() {
  local x=$1
  shift
  for y in "$@"; do [[ $x == "$y" ]] && return 0; done
  return 1
}

# The set is closed under Depends/PreDepends, base packages aside (an alternative "a | b" is
# satisfied when one of them is in the set or the base).
missing=0
for p in "${PKGS[@]}"; do
  while read -r line; do
    alts=$(sed -E 's/^\|?(Pre)?Depends: //; s/[<>]//g' <<<"$line")
    [[ -z $alts ]] && continue
    ok=0
    for a in $alts; do
      if in_list "$a" "${PKGS[@]}" || in_list "$a" "${BASE[@]}"; then ok=1; fi
    done
    # An "|Depends:" line opens an alternative group continued by the next line; judge the
    # group by its last member (apt-cache prints each alternative on its own line).
    if [[ $line == \|* ]]; then
      group_ok=${group_ok:-0}
      ((ok)) && group_ok=1
      continue
    fi
    if ((ok)) || [[ ${group_ok:-0} == 1 ]]; then
      unset group_ok
      continue
    fi
    unset group_ok
    echo "device_deps: $p depends on '$alts', which is neither in the set nor in the base" >&2
    missing=1
  done < <(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
             --no-replaces --no-enhances "$p" | grep -E '^ *\|?(Pre)?Depends:' | sed 's/^ *//')
done
((missing == 0)) || exit 1

mkdir -p "$DEST"
rm -f "$DEST"/*.deb
(cd "$DEST" && apt-get download -qq "${PKGS[@]}")
total=$(du -cb "$DEST"/*.deb | tail -1 | cut -f1)
echo "device_deps: ${#PKGS[@]} packages, $((total / 1024)) KiB in $DEST"
if ((total > 40 * 1024 * 1024)); then
  echo "device_deps: more than 40 MiB: the device tool carries at most 64 MiB with the tree" >&2
  exit 1
fi
