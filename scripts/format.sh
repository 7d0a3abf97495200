#!/usr/bin/env bash
# Formats the tracked C++ and CUDA sources with clang-format 14 (Debian 12's; the repository's
# .clang-format). `--check` changes nothing: it lists the files clang-format would change and
# exits 1 if there are any (ctest runs it as Format.SourcesMatchClangFormat). Other major
# versions format some constructs differently, so only 14 is used.
set -euo pipefail
cd "$(dirname "$0")/.."
CF=${CLANG_FORMAT:-$(command -v clang-format-14 || true)}
if [[ -z "$CF" ]]; then
  echo "format: clang-format-14 not found (bash scripts/setup.sh installs it)" >&2
  exit 2
fi
mapfile -t files < <(git ls-files '*.cpp' '*.h' '*.cu' '*.cuh')
if [[ "${1:-}" == --check ]]; then
  bad=()
  for f in "${files[@]}"; do
    "$CF" --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
  done
  if ((${#bad[@]})); then
    echo "format: ${#bad[@]} file(s) differ from clang-format (run bash scripts/format.sh):" >&2
    printf '  %s\n' "${bad[@]}" >&2
    exit 1
  fi
  echo "format: ${#files[@]} files match clang-format"
else
  "$CF" -i "${files[@]}"
fi
