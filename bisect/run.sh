#!/usr/bin/env bash
# Bisect helper (not committed): build the demo at several commits in parallel, run each twice.
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
commits=$(ls -d bisect/*/ | xargs -n1 basename)
for c in $commits; do
  ( d=bisect/$c; cmake -S $d -B $d/b -DCMAKE_BUILD_TYPE=Release -DFLASHGDN_BUILD_TESTS=OFF -DFLASHGDN_PORTABLE_ARCHS=90a >$d/cfg.log 2>&1 &&
    cmake --build $d/b --target flashgdn_demo -j2 >$d/build.log 2>&1; echo "$c build rc $?" ) &
done
( export JOBS=8 BUILD_DIR=build-gpu; source scripts/env.sh; configure_and_build -DFLASHGDN_BUILD_TESTS=ON -DFLASHGDN_PORTABLE_ARCHS=90a >/tmp/head-build.log 2>&1; echo "HEAD build rc $?" ) &
wait
for c in $commits; do
  for i in 1 2; do echo "$c run $i: $(timeout 60 bisect/$c/b/flashgdn_demo 2>&1 | tail -1)"; done
done
for i in 1 2; do echo "HEAD run $i: $(timeout 60 build-gpu/flashgdn_demo 2>&1 | tail -1)"; done
for tool in racecheck memcheck synccheck; do
  timeout 200 compute-sanitizer --tool $tool --print-limit 20 build-gpu/tests/flashgdn_gpu_tests --gtest_filter='GpuForwardSanitize.SmallVarlenPool' > $OUT/san-$tool.log 2>&1
  echo "$tool rc $?: $(grep 'ERROR SUMMARY' $OUT/san-$tool.log)"
done
