#!/usr/bin/env bash
# The benchmark command: CallFS against nginx and against a bare uvloop + httptools server (the
# "ceiling"), on loopback, one server at a time, driven by a patched wrk; CallFS and nginx log
# each request as they do by default, and CallFS also runs with its access log off, in turns
# with itself. Prints one table and writes every raw number to a JSON file. What each workload
# is: docs/benchmarks.md.
# Usage: ci/bench.sh [--duration SECONDS] [--smoke] [--only a,b,...] [--turns N] [--json PATH]
#
# Environment: CALLFS_VENV (use this existing installation as it is, instead of installing the
# checkout into .venv), CALLFS_CEILING (path of pyceiling.py; default ../shared/bench/),
# CALLFS_BENCH_MIRROR (a Debian mirror to fetch wrk's source from, instead of apt's configured
# sources), XDG_CACHE_HOME (where wrk is cached).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# Debian bookworm's wrk, the source bench/wrk-head.patch applies to.
WRK_SUITE=bookworm
WRK_VERSION=4.1.0-3
MIRROR=${CALLFS_BENCH_MIRROR:-}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/callfs-bench

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "CallFS needs Python 3.11 or newer" >&2
    exit 1
fi
for arg in "$@"; do
    case $arg in -h | --help) exec "$PYTHON" bench/harness.py --help ;; esac
done
# A typo in the arguments should not wait for the installs below.
"$PYTHON" bench/harness.py --check-args "$@"

APT_UPDATED=
# apt_install PACKAGE...: install the packages that are missing, when this user may.
apt_install() {
    local missing=() package status
    for package in "$@"; do
        status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
        [[ $status == *"ok installed"* ]] || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "ci/bench.sh needs these packages: ${missing[*]}" >&2
        exit 1
    fi
    echo "ci/bench.sh: installing ${missing[*]}" >&2
    if [ -z "$APT_UPDATED" ]; then
        timeout 300 apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive timeout 900 \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# -- nginx, with the DAV module for PUT -------------------------------------------------------
NGINX=$(command -v nginx || true)
NGINX=${NGINX:-/usr/sbin/nginx}
if [ ! -x "$NGINX" ]; then
    apt_install nginx-light
fi
if ! "$NGINX" -V 2>&1 | grep -q -- --with-http_dav_module; then
    echo "$NGINX lacks the DAV module (install nginx-light)" >&2
    exit 1
fi
# The TLS rows' certificate is made with the openssl command.
command -v openssl >/dev/null || apt_install openssl

# -- wrk: Debian's source with our patch, built once per patch --------------------------------
PATCH_HASH=$(sha256sum bench/wrk-head.patch | cut -c1-16)
WRK_TAG="debian/$WRK_VERSION+callfs-bench-$PATCH_HASH"
WRK=$CACHE/wrk-$WRK_VERSION-$PATCH_HASH/wrk
WORK=
trap '[ -z "$WORK" ] || rm -rf "$WORK"' EXIT

# apt_sources_as_source DIR: the system's configured apt sources, as source (deb-src)
# entries, into DIR/sources.list and DIR/parts: the same archives and keys, read through a
# private setup.
apt_sources_as_source() {
    local dir=$1 file
    local list=/etc/apt/sources.list parts=/etc/apt/sources.list.d
    eval "$(apt-config shell list Dir::Etc::sourcelist/f parts Dir::Etc::sourceparts/d)"
    : >"$dir/sources.list"
    # One-line format: every `deb` line (options, URI, suite, components kept) as `deb-src`.
    for file in "$list" "${parts%/}"/*.list; do
        [ -f "$file" ] || continue
        sed -En 's/^[[:space:]]*deb(-src)?([[:space:]])/deb-src\2/p' "$file" >>"$dir/sources.list"
    done
    # deb822 format: each stanza's Types becomes deb-src.
    for file in "${parts%/}"/*.sources; do
        [ -f "$file" ] || continue
        sed -E 's/^Types:.*/Types: deb-src/I' "$file" >"$dir/parts/$(basename "$file")"
    done
}

build_wrk() {
    apt_install gcc make libc6-dev pkg-config libluajit-5.1-dev luajit libssl-dev dpkg-dev \
        patch xz-utils
    echo "ci/bench.sh: building wrk $WRK_VERSION with bench/wrk-head.patch" >&2
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/callfs-bench-wrk.XXXXXX")
    # A private source list, package lists and cache: the system's apt setup is left alone.
    mkdir -p "$WORK/apt/lists/partial" "$WORK/apt/cache/archives/partial" "$WORK/apt/parts"
    if [ -n "$MIRROR" ]; then
        local signed=
        [ ! -f /usr/share/keyrings/debian-archive-keyring.gpg ] ||
            signed="[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        echo "deb-src $signed$MIRROR $WRK_SUITE main" >"$WORK/apt/sources.list"
    else
        apt_sources_as_source "$WORK/apt"
    fi
    local apt=(apt-get -qq
        -o Dir::Etc::SourceList="$WORK/apt/sources.list"
        -o Dir::Etc::SourceParts="$WORK/apt/parts"
        -o Dir::State::Lists="$WORK/apt/lists"
        -o Dir::Cache="$WORK/apt/cache")
    [ "$(id -u)" != 0 ] || apt+=(-o APT::Sandbox::User=root)
    # A configured source without source packages only makes update complain; what matters is
    # that one of them has wrk's.
    timeout 300 "${apt[@]}" update ||
        echo "ci/bench.sh: some apt sources have no source index (ignored)" >&2
    (cd "$WORK" && timeout 300 "${apt[@]}" source --download-only "wrk=$WRK_VERSION") || {
        echo "ci/bench.sh: no apt source offers wrk $WRK_VERSION's source; set" \
            "CALLFS_BENCH_MIRROR to a Debian mirror that has $WRK_SUITE" >&2
        exit 1
    }
    # apt checked every file against the signed index; dpkg-source's own complaint that it
    # has no key for the uploader's signature is only shown if unpacking fails.
    dpkg-source -x "$WORK/wrk_$WRK_VERSION.dsc" "$WORK/src" >"$WORK/unpack.log" 2>&1 ||
        { cat "$WORK/unpack.log" >&2; exit 1; }
    patch -s -d "$WORK/src" -p1 --fuzz=0 --no-backup-if-mismatch <bench/wrk-head.patch
    # The flags of Debian's rules: the system LuaJIT and OpenSSL, not wrk's bundled copies.
    timeout 600 make -s -C "$WORK/src" -j"$(nproc)" WITH_LUAJIT=/usr WITH_OPENSSL=/usr \
        VER="$WRK_TAG" >/dev/null 2>&1 ||
        { echo "building wrk failed" >&2; exit 1; }
    mkdir -p "$(dirname "$WRK")"
    cp "$WORK/src/wrk" "$WRK.tmp.$$"
    mv "$WRK.tmp.$$" "$WRK"
    rm -rf "$WORK"
    WORK=
}
# A cached binary must still start (its LuaJIT and OpenSSL libraries may have gone).
# (wrk -v prints its version, then exits 1 for want of a URL.)
case $("$WRK" -v 2>&1 || true) in *"$WRK_TAG"*) ;; *) build_wrk ;; esac

# -- CallFS, installed from this checkout as ci/test.sh does ----------------------------------
if [ -n "${CALLFS_VENV:-}" ]; then
    VENV=$CALLFS_VENV
    if [ ! -x "$VENV/bin/callfs" ]; then
        echo "no callfs in CALLFS_VENV=$VENV" >&2
        exit 1
    fi
else
    VENV=.venv
    if [ ! -x "$VENV/bin/python" ]; then
        if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
            # Debian splits venv out of the interpreter package.
            apt_install python3-venv python3-dev gcc
            rm -rf "$VENV"
            "$PYTHON" -m venv "$VENV"
        fi
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check .
fi

# -- the ceiling lives outside the repository; it is optional ---------------------------------
CEILING=${CALLFS_CEILING:-../shared/bench/pyceiling.py}
if [ -f "$CEILING" ]; then
    CEILING=$(realpath "$CEILING")
else
    echo "note: no pyceiling.py at $CEILING (set CALLFS_CEILING): no ceiling column" >&2
    CEILING=
fi

"$VENV/bin/python" bench/harness.py --wrk "$WRK" --nginx "$NGINX" \
    --callfs "$(realpath "$VENV/bin/callfs")" --ceiling "$CEILING" "$@"

# -- the link row: link downloads against keyed GETs of the same file (bench/links.py) --------
# Runs with the whole suite (not with --only); --smoke makes it small too.
LINK_ARGS=()
for arg in "$@"; do
    case $arg in --only | --only=*) exit 0 ;; --smoke) LINK_ARGS+=(--smoke) ;; esac
done
exec "$VENV/bin/python" bench/links.py --callfs "$(realpath "$VENV/bin/callfs")" "${LINK_ARGS[@]}"
