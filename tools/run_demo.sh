#!/usr/bin/env bash
# `make run`: pgnd on the embedded defaults, state under ./var, loopback only.
#   teacher: $PGND_TEACHER_WEIGHTS when set (e.g. torchvision's vgg19-dcbb9e9d.pth: the paper's loss);
#            otherwise the inception3 teacher (nsfwjs 4.4.0's ImageNet InceptionV3, fetched once with
#            npm pack into var/teachers); if neither can be had, the random teacher, flagged as such.
#   photos:  var/photos (tools/fetch_photos.sh; sources and licences in data/photos/SOURCES.md).
# On the first start (no var/demo-submitted yet) a short demo fit job is submitted on those photos.
set -u
cd "$(dirname "$0")/.."
B=${B:-build}
PORT=${PGND_PORT:-8080}
mkdir -p var

if curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then
    echo "pgnd: something already answers on 127.0.0.1:$PORT (another pgnd?): stop it, or make run PGND_PORT=<port>" >&2
    exit 1
fi

teacher=${PGND_TEACHER_WEIGHTS:-}
if [ -n "$teacher" ]; then
    teacher=$(realpath -e "$teacher") || { echo "pgnd: PGND_TEACHER_WEIGHTS: ${PGND_TEACHER_WEIGHTS} does not exist" >&2; exit 1; }
    echo "pgnd: teacher from PGND_TEACHER_WEIGHTS: $teacher"
elif teacher=$(tools/fetch_inception3.sh var/teachers/inception3-nsfwjs-4.4.0 | tail -n 1) && [ -d "$teacher" ]; then
    teacher=$(cd "$teacher" && pwd)
    echo "pgnd: teacher inception3 (nsfwjs 4.4.0's ImageNet InceptionV3 up to mixed2) from $teacher"
    echo "      for the paper's VGG-19 loss: make run PGND_TEACHER_WEIGHTS=/path/to/vgg19-dcbb9e9d.pth"
else
    teacher=""
    echo "pgnd: WARNING: no teacher weights could be had (no PGND_TEACHER_WEIGHTS, npm pack nsfwjs@4.4.0 failed):"
    echo "      jobs use a RANDOM teacher, which is not a perceptual loss"
fi

images=""
if tools/fetch_photos.sh var/photos >/dev/null; then
    images=$(cd var/photos && pwd)
    echo "pgnd: sample photographs in $images ($(find "$images" -type f \( -name '*.jpg' -o -name '*.png' \) | wc -l) photographs; data/photos/SOURCES.md)"
else
    echo "pgnd: WARNING: the sample photographs could not be fetched: jobs must name their own folder"
fi

echo "pgnd: dashboard and API on http://127.0.0.1:$PORT/ (state in ./var; Ctrl-C stops, jobs resume next start)"
args=(serve --state-dir var --web-dir web --listen "127.0.0.1:$PORT")
[ -n "$teacher" ] && args+=(--teacher-weights "$teacher")
[ -n "$images" ] && args+=(--images "$images")

if [ -n "$images" ] && [ ! -e var/demo-submitted ]; then
    # The demo: a short PGN fit on the sample photographs with the teacher above, submitted once
    # pgnd answers. It shows up on the dashboard; later starts do not submit it again.
    (
        for _ in $(seq 1 600); do # up to 2 minutes (a first start checks the teacher's weights)
            curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
            sleep 0.2
        done
        if curl -sf -X POST "http://127.0.0.1:$PORT/api/v1/jobs" -H 'Content-Type: application/json' \
            -d '{"type": "fit", "params": {"steps": 400, "size": 64, "batch": 6, "val_every": 50, "image_every": 100, "checkpoint_every": 50}}' \
            >var/demo-submitted; then
            echo "pgnd: demo fit job submitted: $(cat var/demo-submitted)"
        else
            rm -f var/demo-submitted
            echo "pgnd: could not submit the demo fit job"
        fi
    ) &
fi
exec "$B/pgnd" "${args[@]}"
