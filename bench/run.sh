#!/usr/bin/env bash
# `make bench`: pgnd's engine next to PyTorch (2 threads each) in the same invocation.
# Rounds interleave the two sides so that a slow phase of this noisy VM hits both; each figure is
# the median over rounds of per-process medians. Output: `bench <name> <value> <unit>` lines.
#   BENCH_ROUNDS (default 3), BENCH_REPS (timed runs per process, default 7)
set -u
cd "$(dirname "$0")/.."
rounds=${BENCH_ROUNDS:-3}
reps=${BENCH_REPS:-7}
C=build/bench/bench_engine
export OMP_NUM_THREADS=2 PGND_THREADS=2
# Debian's torch uses openblas-pthread, whose threads fight OpenMP's: give PyTorch its best case.
export OPENBLAS_NUM_THREADS=1
have_torch=1
command -p python3 -c "import torch" 2>/dev/null || have_torch=0
if [ $have_torch = 0 ]; then
    echo "note: PyTorch not found; install it for the comparison: apt-get install python3-torch" >&2
    echo "note: printing pgnd's own figures only" >&2
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Issue 9: one Deep Image Prior step per arm (bench/bench_train.c, torch_ref.py dip_step), at
# BENCH_DIP_SIZES (default "128 224"), BENCH_DIP_REPS timed steps per process (default 10);
# BENCH_DIP_ONLY=1 runs only these.
dip_sizes=${BENCH_DIP_SIZES:-128 224}
dip_reps=${BENCH_DIP_REPS:-10}
for r in $(seq "$rounds"); do
    for s in $dip_sizes; do
        for arm in mse vgg pgn; do
            build/bench/bench_train dip_step "$arm" "$dip_reps" "$s" >>"$log" 2>/dev/null
            [ $have_torch = 1 ] && command -p python3 bench/torch_ref.py dip_step --arm "$arm" --size "$s" --reps "$dip_reps" --threads 2 >>"$log"
        done
    done
    [ "${BENCH_DIP_ONLY:-0}" = 1 ] && continue
    "$C" conv3x3 "$reps" >>"$log"
    [ $have_torch = 1 ] && command -p python3 bench/torch_ref.py conv3x3 --reps "$reps" --threads 2 >>"$log"
    "$C" vgg_perceptual "$reps" 1 256 >>"$log" 2>/dev/null
    [ $have_torch = 1 ] && command -p python3 bench/torch_ref.py vgg_perceptual --reps "$reps" --threads 2 >>"$log"
    # the teacher issue's sizes
    "$C" vgg_perceptual "$reps" 1 224 >>"$log" 2>/dev/null
    [ $have_torch = 1 ] && command -p python3 bench/torch_ref.py vgg_perceptual --reps "$reps" --threads 2 --size 224 >>"$log"
    "$C" vgg_perceptual "$reps" 8 128 >>"$log" 2>/dev/null
    [ $have_torch = 1 ] && command -p python3 bench/torch_ref.py vgg_perceptual --reps "$reps" --threads 2 --batch 8 --size 128 >>"$log"
    # one online PGN fit step (UNet, batch 6, 64x64, teacher included) next to the PyTorch replica
    "$C" fit_step "$reps" 6 64 >>"$log" 2>/dev/null
    [ $have_torch = 1 ] && command -p python3 bench/torch_ref.py fit_step --reps "$reps" --threads 2 --batch 6 --size 64 >>"$log"
    # the two teachers through the same interface (issue 7): random VGG-19 and inception3, when fetched
    for s in 64 128; do
        "$C" teacher "$reps" 6 "$s" >>"$log" 2>/dev/null
        [ -d var/teachers/inception3-nsfwjs-4.4.0 ] &&
            "$C" teacher "$reps" 6 "$s" var/teachers/inception3-nsfwjs-4.4.0 >>"$log" 2>/dev/null
    done
    # teacher-gradient collection (issue 5): its overhead over the bare teacher gradient
    for s in 64 128; do
        "$C" collect $((2 * reps)) 6 "$s" >>"$log" 2>/dev/null  # twice the reps: per-rep ratios scatter by several %
    done
    # the same with the generators in f32 (the default is bf16 where the CPU has it): pgnd_collect_64_f32_*
    "$C" collect $((2 * reps)) 6 64 f32 >>"$log" 2>/dev/null
    PGND_WINOGRAD=0 "$C" vgg_perceptual "$reps" 1 256 >>"$log" 2>/dev/null
    PGND_WINOGRAD=1 "$C" vgg_perceptual "$reps" 1 256 >>"$log" 2>/dev/null
done
# BENCH_RAW=FILE keeps every process's lines (per round) in FILE.
[ -n "${BENCH_RAW:-}" ] && cp "$log" "$BENCH_RAW"
# Medians over rounds, then the ratios pgnd / PyTorch.
awk '
function median(name,   n, i, j, t, a) {
    n = split(vals[name], a, " ")
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
$1 == "bench" { if (!($2 in vals)) order[++k] = $2; vals[$2] = vals[$2] " " $3; unit[$2] = $4 }
END {
    for (i = 1; i <= k; i++) { m[order[i]] = median(order[i]); printf "bench %s %.3f %s\n", order[i], m[order[i]], unit[order[i]] }
    split("conv3x3_fwd_ms conv3x3_bwd_data_ms conv3x3_bwd_weights_ms vgg_perceptual_256_ms vgg_perceptual_256_direct_ms vgg_perceptual_256_allwino_ms", r, " ")
    for (i in r) {
        t = r[i]; sub(/_direct|_allwino/, "", t)
        if (("pgnd_" r[i]) in m && ("torch_" t) in m) {
            name = r[i]; sub(/_ms$/, "", name)
            printf "bench %s_ratio_vs_torch %.3f x\n", name, m["pgnd_" r[i]] / m["torch_" t]
        }
    }
    if (("pgnd_fit_step_6x64_ms") in m && ("torch_fit_step_6x64_ms") in m)
        printf "bench fit_step_6x64_ratio_vs_torch %.3f x\n", m["pgnd_fit_step_6x64_ms"] / m["torch_fit_step_6x64_ms"]
    if (("pgnd_fit_step_6x64_teacher_ms") in m && ("torch_fit_step_6x64_teacher_ms") in m)
        printf "bench fit_step_6x64_teacher_ratio_vs_torch %.3f x\n", m["pgnd_fit_step_6x64_teacher_ms"] / m["torch_fit_step_6x64_teacher_ms"]
    if (("pgnd_fit_step_6x64_peak_rss_mb") in m && ("torch_fit_step_6x64_peak_rss_mb") in m)
        printf "bench fit_step_6x64_rss_ratio_vs_torch %.3f x\n", m["pgnd_fit_step_6x64_peak_rss_mb"] / m["torch_fit_step_6x64_peak_rss_mb"]
    # Issue 9: each DIP arm (whole step, loss part, DIP part) against PyTorch; VGG step / PGN step
    # per side; the memory of the PGN arm over that of the VGG arm (engine-accounted, peak RSS).
    for (i = 1; i <= k; i++) {
        n = order[i]
        if (n ~ /^pgnd_dip_[a-z]+_[0-9]+(_loss|_dip|_min)?_ms$/ || n ~ /^pgnd_dip_[a-z]+_[0-9]+_peak_rss_mb$/) {
            t = n; sub(/^pgnd_/, "torch_", t)
            name = n; sub(/^pgnd_/, "", name); sub(/_ms$/, "", name); sub(/_peak_rss_mb$/, "_rss", name)
            if (t in m && m[t] > 0)
                printf "bench %s_ratio_vs_torch %.3f x\n", name, m[n] / m[t]
        }
        if (n ~ /^pgnd_dip_vgg_[0-9]+_ms$/) {
            size = n; sub(/^pgnd_dip_vgg_/, "", size); sub(/_ms$/, "", size)
            for (side = 1; side <= 2; side++) {
                pre = side == 1 ? "pgnd" : "torch"
                v = pre "_dip_vgg_" size "_ms"; p = pre "_dip_pgn_" size "_ms"
                if (v in m && p in m && m[p] > 0)
                    printf "bench dip_vgg_over_pgn_%s_%s %.3f x\n", size, pre, m[v] / m[p]
                v = pre "_dip_vgg_" size "_min_ms"; p = pre "_dip_pgn_" size "_min_ms"
                if (v in m && p in m && m[p] > 0)
                    printf "bench dip_vgg_over_pgn_%s_%s_min %.3f x\n", size, pre, m[v] / m[p]
                v = pre "_dip_vgg_" size "_peak_rss_mb"; p = pre "_dip_pgn_" size "_peak_rss_mb"
                if (v in m && p in m && m[v] > 0)
                    printf "bench dip_pgn_over_vgg_%s_rss_%s %.3f x\n", size, pre, m[p] / m[v]
            }
            v = "pgnd_dip_vgg_" size "_engine_peak_mb"; p = "pgnd_dip_pgn_" size "_engine_peak_mb"
            if (v in m && p in m && m[v] > 0)
                printf "bench dip_pgn_over_vgg_%s_engine_mem_pgnd %.3f x\n", size, m[p] / m[v]
        }
    }
    split("256 224 8x128", sz, " ")
    for (i in sz) {
        t = "vgg_perceptual_" sz[i]
        if (("pgnd_" t "_ms") in m && ("torch_" t "_ms") in m && sz[i] != "256")
            printf "bench %s_ratio_vs_torch %.3f x\n", t, m["pgnd_" t "_ms"] / m["torch_" t "_ms"]
        if (("pgnd_" t "_peak_rss_mb") in m && ("torch_" t "_peak_rss_mb") in m)
            printf "bench %s_rss_ratio_vs_torch %.3f x\n", t, m["pgnd_" t "_peak_rss_mb"] / m["torch_" t "_peak_rss_mb"]
    }
}' "$log"
