#!/usr/bin/env bash
# API latency under load while a job trains on both cores (the daemon issue's target):
#   p50/p99 of GET /api/v1/jobs and of a 10,000-point metrics query with 50 concurrent clients
#   (wrk on loopback), and how much the training step slows down meanwhile.
# Prints `bench <name> <value> <unit>` lines. Needs wrk (apt-get install wrk) and sqlite3.
# wrk runs at nice 19: it stands in for clients on other machines, whose CPU is not the server's.
set -eu
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "bench/api_load.sh: needs wrk (apt-get install wrk)" >&2; exit 1; }
command -v sqlite3 >/dev/null || { echo "bench/api_load.sh: needs sqlite3 (apt-get install sqlite3)" >&2; exit 1; }
PHASE_S=${PHASE_S:-20}
dir=$(mktemp -d /tmp/pgnd-load-XXXXXX)
mkfifo "$dir/ready"
build/pgnd serve --state-dir "$dir" --listen 127.0.0.1:0 --web-dir web --threads 2 --ready-fd 3 3>"$dir/ready" \
    2>"$dir/log" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
read -r port <"$dir/ready"
api=http://127.0.0.1:$port/api/v1
img=$PWD/tests/fixtures/images/pattern_80x72.png
post() { curl -sf -X POST "$api/jobs" -H 'Content-Type: application/json' -d "$1" | sed -n 's/.*"id": *\([0-9]*\).*/\1/p'; }
job_field() { curl -sf "$api/jobs/$1" | sed -n "s/.*\"$2\": *\"\{0,1\}\([^,\"}]*\).*/\1/p"; }

# A finished job with a 10,000-point curve: one real step, then 10,000 logged points inserted
# directly into its metrics table (the query is what is measured, not the job).
a=$(post "{\"type\": \"train\", \"params\": {\"image\": \"$img\", \"size\": 64, \"steps\": 1, \"arms\": [\"mse\"]}}")
until [ "$(job_field "$a" state)" = succeeded ]; do sleep 0.2; done
sqlite3 "$dir/pgnd.db" ".timeout 5000" "WITH RECURSIVE s(i) AS (SELECT 2 UNION ALL SELECT i+1 FROM s WHERE i < 10001)
  INSERT INTO metrics(job, step, key, value) SELECT $a, i, 'mse.loss', 1.0/i FROM s;"

# The training job that runs during the load: VGG and MSE arms at 128x128 on both cores.
b=$(post "{\"type\": \"train\", \"params\": {\"image\": \"$img\", \"size\": 128, \"steps\": 1000000, \"arms\": [\"vgg\", \"mse\"], \"log_every\": 1, \"image_every\": 1000000, \"checkpoint_every\": 1000000}}")
until [ "$(job_field "$b" state)" = running ] && [ "$(job_field "$b" step)" -ge 5 ]; do sleep 0.2; done

step_of() { job_field "$b" step; }
# Median of vgg.step_ms over steps (from, to].
median_step_ms() {
    sqlite3 "$dir/pgnd.db" ".timeout 5000" "SELECT value FROM metrics WHERE job=$b AND key='vgg.step_ms' AND step>$1 AND step<=$2 ORDER BY value;" |
        awk '{v[NR]=$1} END {if (NR) print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2); else print "nan"}'
}
pct() { # wrk --latency line "50%" etc -> ms
    awk -v p="$1" '$1 == p { v=$2; if (v ~ /us$/) { sub(/us$/, "", v); v/=1000 } else if (v ~ /ms$/) sub(/ms$/, "", v); else if (v ~ /s$/) { sub(/s$/, "", v); v*=1000 } print v }'
}

s0=$(step_of); sleep "$PHASE_S"; s1=$(step_of)
nice -n 19 wrk -t 2 -c 50 -d "${PHASE_S}s" --latency "$api/jobs" >"$dir/wrk_jobs"
s2=$(step_of)
nice -n 19 wrk -t 2 -c 50 -d "${PHASE_S}s" --latency "$api/jobs/$a/metrics?keys=mse.loss&max_points=10000" >"$dir/wrk_metrics"
s3=$(step_of)
points=$(curl -sf "$api/jobs/$a/metrics?keys=mse.loss&max_points=10000" | grep -o ',' | wc -l)

base=$(median_step_ms "$s0" "$s1"); under_jobs=$(median_step_ms "$s1" "$s2"); under_metrics=$(median_step_ms "$s2" "$s3")
echo "bench api_jobs_p50_ms $(pct 50% <"$dir/wrk_jobs") ms"
echo "bench api_jobs_p99_ms $(pct 99% <"$dir/wrk_jobs") ms"
echo "bench api_jobs_rps $(awk '/Requests\/sec/ {print $2}' "$dir/wrk_jobs") req/s"
echo "bench api_metrics_10k_p50_ms $(pct 50% <"$dir/wrk_metrics") ms"
echo "bench api_metrics_10k_p99_ms $(pct 99% <"$dir/wrk_metrics") ms"
echo "bench api_metrics_10k_rps $(awk '/Requests\/sec/ {print $2}' "$dir/wrk_metrics") req/s"
echo "bench api_metrics_10k_points_returned $((points / 2)) points"
echo "bench train_step_idle_ms $base ms"
echo "bench train_step_slowdown_under_jobs_load $(awk -v a="$under_jobs" -v b="$base" 'BEGIN {printf "%.1f", 100*(a/b-1)}') %"
echo "bench train_step_slowdown_under_metrics_load $(awk -v a="$under_metrics" -v b="$base" 'BEGIN {printf "%.1f", 100*(a/b-1)}') %"
grep -h "Non-2xx\|Socket errors" "$dir/wrk_jobs" "$dir/wrk_metrics" >&2 || true
