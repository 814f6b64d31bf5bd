#!/usr/bin/env bash
# Runs every cmocka test binary from the repository root (fixtures are found relative to it),
# keeps going after a failure, and ends with one line that sums cmocka's counts.
set -u
passed=0; failed=0; broken=()
for t in "$@"; do
    echo "== $t"
    out=$(mktemp)
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$t" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test(s)\./\1/p' "$out" | tail -n 1)
    f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test(s), listed below:/\1/p' "$out" | tail -n 1)
    passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
    # A binary that crashed or printed no summary counts as one failure.
    if [ "$rc" -ne 0 ] && [ -z "$f" ]; then failed=$((failed + 1)); fi
    [ "$rc" -ne 0 ] && broken+=("$t")
    rm -f "$out"
done
echo
[ ${#broken[@]} -eq 0 ] || echo "failing binaries: ${broken[*]}"
echo "tests: $passed passed, $failed failed"
[ ${#broken[@]} -eq 0 ]
