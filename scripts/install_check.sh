#!/usr/bin/env bash
# Checks mixtrain as an installed package, the way a user consumes it:
#   1. builds the library and the CLI, in BUILD_DIR ($1) when given (an existing build, say
#      `build`: only what is stale is rebuilt), else in build-install (Release, no tests or
#      benchmarks), and `cmake --install`s them into a fresh temp prefix;
#   2. builds examples/custom_model against that prefix (find_package(mixtrain 0.2 CONFIG)) and
#      runs it: it exits 1 unless its model learned;
#   3. builds the README's "## Use it as a library" example as shown (its ```cmake block as
#      CMakeLists.txt, its ```cpp block as main.cpp) and runs it: exit 0, output with "loss";
#   4. links a one-file program with `pkg-config --cflags --libs mixtrain` and runs it.
# Usage: bash scripts/install_check.sh [BUILD_DIR]. Everything but the build dir goes in a temp
# dir, removed on success and kept (its path printed) on failure. Needs pkg-config.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
JOBS=${JOBS:-$(nproc)}
CXX=${CXX:-g++}
say() { echo "install_check: $*"; }
fail() {
  echo "install_check: FAILED: $*" >&2
  exit 1
}
command -v pkg-config >/dev/null || fail "pkg-config not found (apt-get install pkgconf)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mixtrain-install-check.XXXXXX")
trap 'rc=$?; if ((rc == 0)); then rm -rf "$WORK"; else echo "install_check: files kept in $WORK" >&2; fi' EXIT
PREFIX=$WORK/prefix

# ---- 1. build and install ----
if [[ -n "${1:-}" ]]; then
  BUILD=$(realpath "$1")
  [[ -f "$BUILD/CMakeCache.txt" ]] || fail "$1 is not a configured build dir"
  say "reusing the build in $BUILD"
  cmake -S . -B "$BUILD" -DMIXTRAIN_INSTALL=ON >/dev/null  # refresh the install rules
else
  BUILD=$ROOT/build-install
  say "configuring $BUILD (Release, no tests or benchmarks)"
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DMIXTRAIN_BUILD_TESTS=OFF \
    -DMIXTRAIN_BUILD_BENCH=OFF -DMIXTRAIN_INSTALL=ON >/dev/null
fi
say "building the library and the CLI"
cmake --build "$BUILD" -j"$JOBS" --target mixtrain_lib mixtrain >"$WORK/build.log" 2>&1 ||
  { tail -40 "$WORK/build.log" >&2; fail "the build failed"; }
say "installing into $PREFIX"
cmake --install "$BUILD" --prefix "$PREFIX" >"$WORK/install.log"
for f in lib/libmixtrain.a bin/mixtrain include/mixtrain/mixtrain.h lib/pkgconfig/mixtrain.pc \
  lib/cmake/mixtrain/mixtrainConfig.cmake lib/cmake/mixtrain/mixtrainConfigVersion.cmake \
  lib/cmake/mixtrain/mixtrainTargets.cmake; do
  [[ -f "$PREFIX/$f" ]] || fail "the install lacks $f"
done
# Every public header, and nothing else under include/.
diff <(cd include && find . -type f | sort) <(cd "$PREFIX/include" && find . -type f | sort) ||
  fail "the installed headers differ from include/"
"$PREFIX/bin/mixtrain" --version

# Configures and builds the CMake project in $1 against the prefix, in $2.
build_against_prefix() {
  cmake -S "$1" -B "$2" -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_BUILD_TYPE=Release \
    >"$2.configure.log" 2>&1 || { cat "$2.configure.log" >&2; fail "configuring $1 failed"; }
  local found
  found=$(sed -n 's/^mixtrain_DIR:PATH=//p' "$2/CMakeCache.txt")
  [[ "$found" == "$PREFIX/lib/cmake/mixtrain" ]] ||
    fail "$1 found mixtrain in '$found', not in the install under test"
  cmake --build "$2" -j"$JOBS" >"$2.build.log" 2>&1 || { cat "$2.build.log" >&2; fail "building $1 failed"; }
}

# ---- 2. examples/custom_model ----
say "building examples/custom_model against the install"
build_against_prefix "$ROOT/examples/custom_model" "$WORK/custom_model"
say "running custom_model"
"$WORK/custom_model/custom_model" "$WORK/custom_model-out" || fail "custom_model exited with $?"

# ---- 3. the README's library example, as written ----
say "extracting the README's \"## Use it as a library\" example"
mkdir -p "$WORK/readme"
extract_block() {  # $1: the fence's language; the first such block after the heading
  awk -v lang="$1" '
    /^## / { in_section = ($0 == "## Use it as a library") }
    in_section && !done && $0 == "```" lang { inside = 1; next }
    inside && $0 == "```" { inside = 0; done = 1 }
    inside { print }' README.md
}
extract_block cmake >"$WORK/readme/CMakeLists.txt"
extract_block cpp >"$WORK/readme/main.cpp"
[[ -s "$WORK/readme/CMakeLists.txt" ]] || fail "README: no \`\`\`cmake block under \"## Use it as a library\""
[[ -s "$WORK/readme/main.cpp" ]] || fail "README: no \`\`\`cpp block under \"## Use it as a library\""
say "building it ($(wc -l <"$WORK/readme/CMakeLists.txt")-line CMakeLists.txt, $(wc -l <"$WORK/readme/main.cpp")-line main.cpp)"
build_against_prefix "$WORK/readme" "$WORK/readme-build"
say "running it"
(cd "$WORK/readme" && "$WORK/readme-build/app") | tee "$WORK/readme.out" || fail "the README example exited with $?"
grep -q loss "$WORK/readme.out" || fail "the README example printed no loss"

# ---- 4. pkg-config ----
say "linking a program with pkg-config: $(PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig pkg-config --cflags --libs mixtrain)"
mkdir -p "$WORK/pc"
cat >"$WORK/pc/main.cpp" <<'EOF'
// y = 2x + 1 from a CSV file, fitted by one Linear layer in bf16 (the Trainer pulls in every
// dependency of the static library: oneDNN, zlib, OpenMP, MPI when built with it).
#include <mixtrain/mixtrain.h>

#include <cstdio>
#include <fstream>

using namespace mixtrain;

int main() {
  std::ofstream csv("line.csv");
  csv << "x,y\n";
  for (int i = 0; i < 500; ++i) csv << i / 250.0 - 1 << "," << 2 * (i / 250.0 - 1) + 1 << "\n";
  csv.close();
  Rng rng(0);
  auto net = std::make_shared<nn::Sequential>();
  net->add<nn::Linear>(1, 1, true, rng);
  train::TrainConfig cfg;
  cfg.precision = "bf16";
  cfg.steps = 300;
  cfg.batch = 32;
  cfg.lr = 0.05;
  cfg.out = "run";
  train::Trainer trainer(cfg, train::Model::of(net), open_data("csv:line.csv,target=y"));
  train::TrainSummary s = trainer.run();
  std::printf("pkg-config program: %s val loss %.5f\n", s.precision_name.c_str(), s.val_loss);
  return s.val_loss < 0.01 ? 0 : 1;
}
EOF
# shellcheck disable=SC2046  # the flags are meant to split
(cd "$WORK/pc" && "$CXX" -std=c++20 -O1 main.cpp -o pc_program \
  $(PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig pkg-config --cflags --libs mixtrain)) ||
  fail "the pkg-config link failed"
(cd "$WORK/pc" && ./pc_program) || fail "the pkg-config program exited with $?"

say "all checks passed in $SECONDS s"
