#!/usr/bin/env bash
# Builds the binaries of the cluster add-ons that run as pods on the real node: CoreDNS
# (github.com/coredns/coredns) and metrics-server (sigs.k8s.io/metrics-server), static
# (CGO off), from their Go modules at pinned versions. Binaries land in a cache directory
# keyed by the versions, outside the clone; each is skipped when it is already there at
# the right module version.
#
# Usage: hack/build-addons.sh            build what is missing, print the bin dir
#        hack/build-addons.sh --bin-dir  print the bin dir only (builds nothing)
#        hack/build-addons.sh --env      print NAME=value lines (versions, commits, dirs)
#
# Environment: SHOPPING_GUIDE_CACHE (cache root, default $XDG_CACHE_HOME/shopping-guide).
set -euo pipefail

COREDNS_VERSION=v1.14.7
METRICS_SERVER_VERSION=v0.9.0
# Commits of the release tags, stamped into the binaries as their Makefiles do.
COREDNS_COMMIT=427fc80ed9ca47f354585eb30a3f1332950856c4
METRICS_SERVER_COMMIT=df0ca06314dd3b367974d01bf3f9f6f3921256bf
COREDNS_MODULE=github.com/coredns/coredns
METRICS_SERVER_MODULE=sigs.k8s.io/metrics-server

CACHE_ROOT=${SHOPPING_GUIDE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shopping-guide}
KEY="addons-coredns-${COREDNS_VERSION}_metrics-server-${METRICS_SERVER_VERSION}"
ADDONS_DIR="$CACHE_ROOT/$KEY"
BIN_DIR="$ADDONS_DIR/bin"
LOG_DIR="$ADDONS_DIR/logs"
WORK_DIR="$ADDONS_DIR/work"
TIMES_FILE="$ADDONS_DIR/build-times.txt"

case "${1:-}" in
--bin-dir)
    echo "$BIN_DIR"
    exit 0
    ;;
--env)
    for var in COREDNS_VERSION METRICS_SERVER_VERSION COREDNS_COMMIT METRICS_SERVER_COMMIT \
        COREDNS_MODULE METRICS_SERVER_MODULE ADDONS_DIR BIN_DIR LOG_DIR; do
        printf '%s=%s\n' "$var" "${!var}"
    done
    exit 0
    ;;
"") ;;
*)
    echo "usage: $0 [--bin-dir|--env]" >&2
    exit 2
    ;;
esac

command -v go >/dev/null || { echo "error: go is not on PATH" >&2; exit 1; }

# Never fetch another toolchain; the builds must work with the installed Go.
export GOTOOLCHAIN=local
export CGO_ENABLED=0
unset GOFLAGS

mkdir -p "$BIN_DIR" "$LOG_DIR" "$WORK_DIR"

log() { printf '[build-addons] %s\n' "$*" >&2; }

# True when $1 exists and its embedded build info names module $2 at version $3
# (as the main module or as a dependency).
has_module_version() {
    local bin=$1 mod=$2 ver=$3
    [[ -x "$bin" ]] || return 1
    go version -m "$bin" 2>/dev/null |
        awk -v m="$mod" -v v="$ver" '($1 == "mod" || $1 == "dep") && $2 == m && $3 == v {f=1} END {exit !f}'
}

# module_info MODULE VERSION COMMIT: prints the release time of MODULE@VERSION (the build
# date stamped into the binary), after checking that the module proxy's origin for it is the
# pinned COMMIT.
module_info() {
    local json hash time
    json=$(cd "$WORK_DIR" && go list -m -json "$1@$2") || return 1
    hash=$(sed -n 's/^\t\t"Hash": "\(.*\)",\{0,1\}$/\1/p' <<<"$json" | head -n 1)
    time=$(sed -n 's/^\t"Time": "\(.*\)",\{0,1\}$/\1/p' <<<"$json" | head -n 1)
    if [[ -n "$hash" && "$hash" != "$3" ]]; then
        log "$1@$2 comes from commit $hash, not the pinned $3"
        return 1
    fi
    [[ -n "$time" ]] || { log "cannot read the release time of $1@$2"; return 1; }
    echo "$time"
}

declare -a TIMINGS=()

# go_install NAME PACKAGE@VERSION LDFLAGS [BUILD FLAGS...]: installs into a temporary GOBIN,
# logging to $LOG_DIR/NAME.log, with a progress line every minute; moves the binary into
# $BIN_DIR when it is done. On failure shows the end of the log.
go_install() {
    local name=$1 pkg=$2 ldflags=$3; shift 3
    local logfile="$LOG_DIR/$name.log" tmp pid rc start=$SECONDS
    tmp=$(mktemp -d "$WORK_DIR/gobin.XXXXXX")
    log "building $name ($pkg), log $logfile"
    {
        printf '===== %s go install %s\n' "$(date -u +%FT%TZ)" "$pkg"
        printf 'ldflags: %s\n' "$ldflags"
    } >"$logfile"
    (cd "$WORK_DIR" && GOBIN="$tmp" go install -v -trimpath "$@" -ldflags "$ldflags" "$pkg") \
        >>"$logfile" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        for _ in $(seq 60); do
            kill -0 "$pid" 2>/dev/null || break 2
            sleep 1
        done
        log "  $name: still building, $((SECONDS - start))s elapsed ($(wc -l <"$logfile") log lines)"
    done
    rc=0
    wait "$pid" || rc=$?
    if ((rc != 0)); then
        rm -rf "$tmp"
        log "$name failed after $((SECONDS - start))s (exit $rc); last lines of $logfile:"
        tail -n 30 "$logfile" >&2
        exit 1
    fi
    mv "$tmp/$name" "$BIN_DIR/$name"
    rmdir "$tmp"
    local took=$((SECONDS - start))
    TIMINGS+=("$name ${took}s")
    echo "$(date -u +%FT%TZ) $name ${took}s" >>"$TIMES_FILE"
    log "built $name in ${took}s: $BIN_DIR/$name ($(du -h "$BIN_DIR/$name" | cut -f1))"
}

# --- CoreDNS ------------------------------------------------------------------------------
# The default plugin set; `grpcnotrace` as upstream's Makefile builds it. The version string
# is a constant of the module; the commit is stamped as the Makefile does.
if has_module_version "$BIN_DIR/coredns" "$COREDNS_MODULE" "$COREDNS_VERSION"; then
    log "coredns $COREDNS_VERSION already built"
else
    module_info "$COREDNS_MODULE" "$COREDNS_VERSION" "$COREDNS_COMMIT" >/dev/null
    go_install coredns "$COREDNS_MODULE@$COREDNS_VERSION" \
        "-s -w -X $COREDNS_MODULE/coremain.GitCommit=${COREDNS_COMMIT:0:8}" -tags grpcnotrace
fi
"$BIN_DIR/coredns" -version | grep "CoreDNS-${COREDNS_VERSION#v}" >/dev/null ||
    { log "$BIN_DIR/coredns does not report version $COREDNS_VERSION"; exit 1; }

# --- metrics-server -----------------------------------------------------------------------
# Upstream's Makefile stamps client-go's version variables (what --version prints and the
# User-Agent carries).
if has_module_version "$BIN_DIR/metrics-server" "$METRICS_SERVER_MODULE" "$METRICS_SERVER_VERSION"; then
    log "metrics-server $METRICS_SERVER_VERSION already built"
else
    ms_date=$(module_info "$METRICS_SERVER_MODULE" "$METRICS_SERVER_VERSION" "$METRICS_SERVER_COMMIT")
    ms_pkg=k8s.io/client-go/pkg/version
    go_install metrics-server "$METRICS_SERVER_MODULE/cmd/metrics-server@$METRICS_SERVER_VERSION" \
        "-s -w -X $ms_pkg.gitVersion=$METRICS_SERVER_VERSION -X $ms_pkg.gitCommit=$METRICS_SERVER_COMMIT -X $ms_pkg.gitTreeState=clean -X $ms_pkg.buildDate=$ms_date"
fi
[[ "$("$BIN_DIR/metrics-server" --version 2>/dev/null)" == "$METRICS_SERVER_VERSION" ]] ||
    { log "$BIN_DIR/metrics-server does not report version $METRICS_SERVER_VERSION"; exit 1; }

if ((${#TIMINGS[@]} > 0)); then
    log "build times: ${TIMINGS[*]}"
fi
log "binaries are in $BIN_DIR"
echo "$BIN_DIR"
