#!/usr/bin/env bash
# Builds the binaries of a local Kubernetes cluster from Go modules: kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, and the node's kubelet and kube-proxy
# (k8s.io/kubernetes), etcd, kwok, helm and the tests' Prometheus; and the node's pause binary from the C source that
# ships inside the k8s.io/kubernetes module (gcc, static). Binaries land in a cache directory keyed by the pinned versions,
# outside the clone, and each one is skipped when it is already there at the right version.
#
# Usage: hack/build-cluster-binaries.sh            build what is missing, print the bin dir
#        hack/build-cluster-binaries.sh --bin-dir  print the bin dir only (builds nothing)
set -euo pipefail

K8S_VERSION=v1.34.4
ETCD_VERSION=v3.5.35
KWOK_VERSION=v0.7.0
HELM_VERSION=v3.22.0
# Prometheus 3.16.0 (module versions are v0.<major><minor>.<patch>). Debian's package lacks the
# Kubernetes service discovery that the end-to-end tests rely on.
PROMETHEUS_VERSION=v0.316.0

CACHE_ROOT=${SHOPPING_GUIDE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shopping-guide}
KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
BIN_DIR="$CACHE_ROOT/$KEY/bin"
WORK_DIR="$CACHE_ROOT/$KEY/work"
TIMES_FILE="$CACHE_ROOT/$KEY/build-times.txt"
LOG_DIR="$CACHE_ROOT/$KEY/logs"

if [[ "${1:-}" == "--bin-dir" ]]; then
    echo "$BIN_DIR"
    exit 0
fi

command -v go >/dev/null || { echo "error: go is not on PATH" >&2; exit 1; }

# Never fetch another toolchain; the builds must work with the installed Go.
export GOTOOLCHAIN=local
export GOFLAGS=-mod=mod
export CGO_ENABLED=0

mkdir -p "$BIN_DIR" "$WORK_DIR"

log() { printf '[build-cluster-binaries] %s\n' "$*" >&2; }

# True when $1 exists and its embedded build info names module $2 at version $3
# (as the main module or as a dependency).
has_module_version() {
    local bin=$1 mod=$2 ver=$3
    [[ -x "$bin" ]] || return 1
    go version -m "$bin" 2>/dev/null |
        awk -v m="$mod" -v v="$ver" '($1 == "mod" || $1 == "dep") && $2 == m && $3 == v {f=1} END {exit !f}'
}

# shellcheck source=hack/lib/progress.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/progress.sh"

# --- Kubernetes -------------------------------------------------------------------------
k8s_minor=${K8S_VERSION#v1.}
k8s_minor=${k8s_minor%%.*}
staging_version="v0.${K8S_VERSION#v1.}"
K8S_LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    K8S_LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
    K8S_LDFLAGS+=" -X $pkg.gitTreeState=clean"
done

k8s_module_dir="$WORK_DIR/kubernetes"

# k8s.io/kubernetes replaces its staging modules with ./staging/src/...; a throwaway main
# module has to point each of them at its published version instead. The list comes from
# the tagged go.mod so that it follows the release.
prepare_k8s_module() {
    [[ -f "$k8s_module_dir/go.mod" ]] && return 0
    mkdir -p "$k8s_module_dir"
    local upstream
    upstream=$(cd "$k8s_module_dir" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
        sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
    [[ -f "$upstream" ]] || { log "cannot find go.mod of k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
    local go_line godebug_lines replaces
    go_line=$(grep -m1 '^go ' "$upstream")
    godebug_lines=$(grep '^godebug ' "$upstream" || true)
    replaces=$(awk -v v="$staging_version" \
        '$2 == "=>" && $3 ~ /^\.\/staging\/src\// {printf "\t%s => %s %s\n", $1, $1, v}' "$upstream")
    [[ -n "$replaces" ]] || { log "no staging replace directives found in $upstream"; exit 1; }
    {
        echo "module shopping-guide.local/k8s-build"
        echo
        echo "$go_line"
        [[ -n "$godebug_lines" ]] && printf '\n%s\n' "$godebug_lines"
        echo
        echo "require k8s.io/kubernetes $K8S_VERSION"
        echo
        echo "replace ("
        echo "$replaces"
        echo ")"
    } >"$k8s_module_dir/go.mod.tmp"
    mv "$k8s_module_dir/go.mod.tmp" "$k8s_module_dir/go.mod"
    log "wrote $k8s_module_dir/go.mod ($(grep -c '=>' "$k8s_module_dir/go.mod") staging replaces)"
}

k8s_binary_ok() {
    local name=$1 out
    has_module_version "$BIN_DIR/$name" k8s.io/kubernetes "$K8S_VERSION" || return 1
    if [[ "$name" == kubectl ]]; then
        out=$("$BIN_DIR/$name" version --client 2>/dev/null) || return 1
    else
        out=$("$BIN_DIR/$name" --version 2>/dev/null) || return 1
    fi
    [[ "$out" == *"$K8S_VERSION"* ]]
}

build_k8s() {
    local name=$1
    (cd "$k8s_module_dir" &&
        go build -trimpath -ldflags "$K8S_LDFLAGS" -o "$BIN_DIR/.$name.tmp" \
            "k8s.io/kubernetes/cmd/$name")
    mv "$BIN_DIR/.$name.tmp" "$BIN_DIR/$name"
}

# --- pause (the sandbox container's process) -------------------------------------------
# No registry is needed: the source is in the module, and the image is packed from the binary
# by hack/node.sh. Static, so the image holds nothing else.
build_pause() {
    local src
    src=$(cd "$k8s_module_dir" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
    [[ -f "$src" ]] || { log "no pause.c in the k8s.io/kubernetes module ($src)"; exit 1; }
    command -v gcc >/dev/null || { log "gcc is needed for the pause binary"; exit 1; }
    gcc -Os -Wall -Werror -static -DVERSION=$K8S_VERSION -o "$BIN_DIR/.pause.tmp" "$src"
    strip "$BIN_DIR/.pause.tmp" 2>/dev/null || true
    mv "$BIN_DIR/.pause.tmp" "$BIN_DIR/pause"
    echo "$K8S_VERSION" >"$BIN_DIR/pause.version"
}

# --- etcd -------------------------------------------------------------------------------
# go.etcd.io/etcd/server/v3 has replace directives of its own, so `go install pkg@version`
# refuses it; a throwaway module that requires it builds the same main package.
build_etcd() {
    local dir="$WORK_DIR/etcd"
    mkdir -p "$dir"
    if [[ ! -f "$dir/go.mod" ]]; then
        (cd "$dir" && go mod init shopping-guide.local/etcd-build >/dev/null 2>&1)
    fi
    (cd "$dir" &&
        go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" &&
        go build -trimpath -ldflags "-s -w" -o "$BIN_DIR/.etcd.tmp" go.etcd.io/etcd/server/v3)
    mv "$BIN_DIR/.etcd.tmp" "$BIN_DIR/etcd"
}

# --- kwok and helm (plain go install) ----------------------------------------------------
go_install() {
    local name=$1 pkg=$2 ldflags=$3 tmp
    tmp=$(mktemp -d "$WORK_DIR/gobin.XXXXXX")
    GOBIN="$tmp" GOFLAGS='' go install -trimpath -ldflags "$ldflags" "$pkg"
    mv "$tmp/$name" "$BIN_DIR/$name"
    rmdir "$tmp"
}

build_prometheus() {
    local version=${PROMETHEUS_VERSION#v0.}
    version="${version:0:1}.${version:1:2}.${version#*.}"
    go_install prometheus "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION" \
        "-s -w -X github.com/prometheus/common/version.Version=$version -X github.com/prometheus/common/version.Branch=release"
}

# --- the plan: what is missing, built in this order ---------------------------------------
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy
    pause etcd kwok helm prometheus)

version_of() {
    case $1 in
        kube-* | kubectl | kubelet | pause) echo "$K8S_VERSION" ;;
        etcd) echo "$ETCD_VERSION" ;;
        kwok) echo "$KWOK_VERSION" ;;
        helm) echo "$HELM_VERSION" ;;
        prometheus) echo "$PROMETHEUS_VERSION" ;;
    esac
}

is_built() {
    case $1 in
        kube-* | kubectl | kubelet) k8s_binary_ok "$1" ;;
        pause) [[ -x "$BIN_DIR/pause" && "$(cat "$BIN_DIR/pause.version" 2>/dev/null)" == "$K8S_VERSION" ]] ;;
        etcd) has_module_version "$BIN_DIR/etcd" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" ;;
        kwok) has_module_version "$BIN_DIR/kwok" sigs.k8s.io/kwok "$KWOK_VERSION" ;;
        helm) has_module_version "$BIN_DIR/helm" helm.sh/helm/v3 "$HELM_VERSION" ;;
        prometheus) has_module_version "$BIN_DIR/prometheus" github.com/prometheus/prometheus "$PROMETHEUS_VERSION" ;;
    esac
}

# Runs under set -e (progress_step): one command a line, no `&&` chains that would mute it.
build_one() {
    case $1 in
        kube-* | kubectl | kubelet)
            prepare_k8s_module
            build_k8s "$1"
            ;;
        pause)
            prepare_k8s_module
            build_pause
            ;;
        etcd) build_etcd ;;
        kwok) go_install kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "-s -w" ;;
        helm) go_install helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
            "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" ;;
        prometheus) build_prometheus ;;
    esac
}

declare -a MISSING=() TIMINGS=()
for name in "${BINARIES[@]}"; do
    if is_built "$name"; then
        log "$name $(version_of "$name") already built"
    else
        MISSING+=("$name")
    fi
done
((${#MISSING[@]} == 0)) || log "${#MISSING[@]} of ${#BINARIES[@]} binaries to build: ${MISSING[*]}"
step=0
for name in "${MISSING[@]}"; do
    step=$((step + 1))
    progress_step "[build-cluster-binaries]" "$step" "${#MISSING[@]}" "$name $(version_of "$name")" \
        "$LOG_DIR/$name.log" "make cluster-binaries" build_one "$name"
    TIMINGS+=("$name ${STEP_SECONDS}s")
    echo "$(date -u +%FT%TZ) $name ${STEP_SECONDS}s" >>"$TIMES_FILE"
done

if ((${#TIMINGS[@]} > 0)); then
    log "build times: ${TIMINGS[*]}"
fi
log "binaries are in $BIN_DIR"
echo "$BIN_DIR"
