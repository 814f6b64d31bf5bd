#!/usr/bin/env bash
# Runs every cmocka test binary from the repository root (fixtures are found relative to it),
# keeps going after a failure, and ends with one summary line.
set -u
pass=0; fail=0; failed=()
for t in "$@"; do
    echo "== $t"
    if OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$t"; then pass=$((pass + 1)); else fail=$((fail + 1)); failed+=("$t"); fi
done
echo
[ ${#failed[@]} -eq 0 ] || echo "failed binaries: ${failed[*]}"
echo "test binaries: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
