#!/usr/bin/env bash
# Builds the binaries of the cluster add-ons that run as pods on the real node: CoreDNS
# (github.com/coredns/coredns) and metrics-server (sigs.k8s.io/metrics-server), and of
# versitygw (github.com/versity/versitygw, Apache-2.0: an S3 gateway over a plain directory,
# the object store of the tests, on the host and as a pod), static (CGO off), from their Go
# modules at pinned versions. Binaries land in a cache directory
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
VERSITYGW_VERSION=v1.8.0
# Commits of the release tags, stamped into the binaries as their Makefiles do.
COREDNS_COMMIT=427fc80ed9ca47f354585eb30a3f1332950856c4
METRICS_SERVER_COMMIT=df0ca06314dd3b367974d01bf3f9f6f3921256bf
VERSITYGW_COMMIT=fd04bc1df2656298577b82667a4195c77f8c7563
COREDNS_MODULE=github.com/coredns/coredns
METRICS_SERVER_MODULE=sigs.k8s.io/metrics-server
VERSITYGW_MODULE=github.com/versity/versitygw

CACHE_ROOT=${SHOPPING_GUIDE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shopping-guide}
KEY="addons-coredns-${COREDNS_VERSION}_metrics-server-${METRICS_SERVER_VERSION}_versitygw-${VERSITYGW_VERSION}"
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
    for var in COREDNS_VERSION METRICS_SERVER_VERSION VERSITYGW_VERSION COREDNS_COMMIT \
        METRICS_SERVER_COMMIT VERSITYGW_COMMIT COREDNS_MODULE METRICS_SERVER_MODULE \
        VERSITYGW_MODULE ADDONS_DIR BIN_DIR LOG_DIR; do
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

# shellcheck source=hack/lib/progress.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/progress.sh"

# go_install NAME PACKAGE@VERSION LDFLAGS [BUILD FLAGS...]: installs into a temporary GOBIN and
# moves the binary into $BIN_DIR. Runs as a progress_step, its output in the step's log.
go_install() {
    local name=$1 pkg=$2 ldflags=$3 tmp
    shift 3
    tmp=$(mktemp -d "$WORK_DIR/gobin.XXXXXX")
    printf '===== %s go install %s\nldflags: %s\n' "$(date -u +%FT%TZ)" "$pkg" "$ldflags"
    (cd "$WORK_DIR" && GOBIN="$tmp" go install -v -trimpath "$@" -ldflags "$ldflags" "$pkg") ||
        { rm -rf "$tmp"; return 1; }
    mv "$tmp/$name" "$BIN_DIR/$name"
    rmdir "$tmp"
}

# --- CoreDNS ------------------------------------------------------------------------------
# The default plugin set; `grpcnotrace` as upstream's Makefile builds it. The version string
# is a constant of the module; the commit is stamped as the Makefile does.
build_coredns() {
    module_info "$COREDNS_MODULE" "$COREDNS_VERSION" "$COREDNS_COMMIT" >/dev/null
    go_install coredns "$COREDNS_MODULE@$COREDNS_VERSION" \
        "-s -w -X $COREDNS_MODULE/coremain.GitCommit=${COREDNS_COMMIT:0:8}" -tags grpcnotrace
}

# --- metrics-server -----------------------------------------------------------------------
# Upstream's Makefile stamps client-go's version variables (what --version prints and the
# User-Agent carries).
build_metrics_server() {
    local date pkg=k8s.io/client-go/pkg/version
    date=$(module_info "$METRICS_SERVER_MODULE" "$METRICS_SERVER_VERSION" "$METRICS_SERVER_COMMIT")
    go_install metrics-server "$METRICS_SERVER_MODULE/cmd/metrics-server@$METRICS_SERVER_VERSION" \
        "-s -w -X $pkg.gitVersion=$METRICS_SERVER_VERSION -X $pkg.gitCommit=$METRICS_SERVER_COMMIT -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
}

# --- versitygw ----------------------------------------------------------------------------
# Stamped as its Makefile does: version, commit, build time (the release's).
build_versitygw() {
    local date
    date=$(module_info "$VERSITYGW_MODULE" "$VERSITYGW_VERSION" "$VERSITYGW_COMMIT")
    go_install versitygw "$VERSITYGW_MODULE/cmd/versitygw@$VERSITYGW_VERSION" \
        "-s -w -X main.Version=$VERSITYGW_VERSION -X main.Build=$VERSITYGW_COMMIT -X main.BuildTime=$date"
}

# --- the plan: what is missing, built in this order ---------------------------------------
declare -a MISSING=() TIMINGS=()
if has_module_version "$BIN_DIR/coredns" "$COREDNS_MODULE" "$COREDNS_VERSION"; then
    log "coredns $COREDNS_VERSION already built"
else
    MISSING+=(coredns)
fi
if has_module_version "$BIN_DIR/metrics-server" "$METRICS_SERVER_MODULE" "$METRICS_SERVER_VERSION"; then
    log "metrics-server $METRICS_SERVER_VERSION already built"
else
    MISSING+=(metrics-server)
fi
if has_module_version "$BIN_DIR/versitygw" "$VERSITYGW_MODULE" "$VERSITYGW_VERSION"; then
    log "versitygw $VERSITYGW_VERSION already built"
else
    MISSING+=(versitygw)
fi
step=0
for name in "${MISSING[@]}"; do
    step=$((step + 1))
    case $name in
    coredns) version=$COREDNS_VERSION ;;
    metrics-server) version=$METRICS_SERVER_VERSION ;;
    *) version=$VERSITYGW_VERSION ;;
    esac
    progress_step "[build-addons]" "$step" "${#MISSING[@]}" "$name $version" "$LOG_DIR/$name.log" \
        "make cluster-binaries" "build_${name//-/_}"
    TIMINGS+=("$name ${STEP_SECONDS}s")
    echo "$(date -u +%FT%TZ) $name ${STEP_SECONDS}s" >>"$TIMES_FILE"
    log "built $name: $BIN_DIR/$name ($(du -h "$BIN_DIR/$name" | cut -f1))"
done

"$BIN_DIR/coredns" -version | grep "CoreDNS-${COREDNS_VERSION#v}" >/dev/null ||
    { log "$BIN_DIR/coredns does not report version $COREDNS_VERSION"; exit 1; }
[[ "$("$BIN_DIR/metrics-server" --version 2>/dev/null)" == "$METRICS_SERVER_VERSION" ]] ||
    { log "$BIN_DIR/metrics-server does not report version $METRICS_SERVER_VERSION"; exit 1; }
"$BIN_DIR/versitygw" --version | grep -x "Version  : $VERSITYGW_VERSION" >/dev/null ||
    { log "$BIN_DIR/versitygw does not report version $VERSITYGW_VERSION"; exit 1; }

if ((${#TIMINGS[@]} > 0)); then
    log "build times: ${TIMINGS[*]}"
fi
log "binaries are in $BIN_DIR"
echo "$BIN_DIR"
