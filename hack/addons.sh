#!/usr/bin/env bash
# The cluster add-ons that run as pods on the real node: CoreDNS (Services resolve by name
# from pods) and metrics-server (`kubectl top`, CPU-based HPAs). Binaries are built from
# their Go modules by hack/build-addons.sh; the images hold nothing but the static binary.
#
# Usage: hack/addons.sh build                    build the binaries (skips what is there)
#        hack/addons.sh images                   build the images (localhost/shopping-guide/...:
#                                                both add-ons and versitygw, the tests' S3)
#                                                and save each as a docker-archive tarball;
#                                                prints the tarball paths, one a line
#        hack/addons.sh render                   print the manifests as they are applied
#        hack/addons.sh apply KUBECONFIG KUBECTL apply both manifests, wait for CoreDNS to be
#                                                Ready and answer, and for the metrics API to
#                                                list at least one node
#
# Environment (defaults are the node's addresses):
#   SHOPPING_GUIDE_SERVICE_CIDR      Service CIDR of the apiserver (198.18.128.0/20)
#   SHOPPING_GUIDE_CLUSTER_DNS_IP    clusterIP of kube-system/kube-dns (198.18.128.10)
#   SHOPPING_GUIDE_CLUSTER_DOMAIN    cluster domain (cluster.local)
#   SHOPPING_GUIDE_ADDONS_TIMEOUT    seconds to wait for each add-on in `apply` (180)
#   SHOPPING_GUIDE_ADDONS_DNS_CHECK  0 skips the DNS query from this host in `apply` (1)
#   SHOPPING_GUIDE_CACHE             cache root, as for hack/build-addons.sh
set -euo pipefail

SERVICE_CIDR=${SHOPPING_GUIDE_SERVICE_CIDR:-198.18.128.0/20}
CLUSTER_DNS_IP=${SHOPPING_GUIDE_CLUSTER_DNS_IP:-198.18.128.10}
CLUSTER_DOMAIN=${SHOPPING_GUIDE_CLUSTER_DOMAIN:-cluster.local}
TIMEOUT=${SHOPPING_GUIDE_ADDONS_TIMEOUT:-180}
DNS_CHECK=${SHOPPING_GUIDE_ADDONS_DNS_CHECK:-1}

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD="$HACK_DIR/build-addons.sh"
MANIFEST_DIR="$HACK_DIR/addons"
IMAGE_PREFIX=localhost/shopping-guide
# Image label holding the sha256 of the binary an image was built from.
BINARY_LABEL=io.shoppingguide.binary.sha256
NAMESPACE=kube-system

log() { printf '[addons] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Versions, commits and directories, from the build script (the one place they are pinned).
while IFS='=' read -r name value; do
    case "$name" in
    COREDNS_VERSION | METRICS_SERVER_VERSION | VERSITYGW_VERSION | COREDNS_COMMIT | \
        METRICS_SERVER_COMMIT | VERSITYGW_COMMIT | COREDNS_MODULE | METRICS_SERVER_MODULE | \
        VERSITYGW_MODULE | ADDONS_DIR | BIN_DIR)
        printf -v "$name" '%s' "$value"
        ;;
    esac
done < <("$BUILD" --env)
[[ -n "${BIN_DIR:-}" && -n "${COREDNS_VERSION:-}" && -n "${METRICS_SERVER_VERSION:-}" &&
    -n "${VERSITYGW_VERSION:-}" ]] ||
    die "$BUILD --env printed no versions"
IMAGES_DIR="$ADDONS_DIR/images"
COREDNS_IMAGE="$IMAGE_PREFIX/coredns:$COREDNS_VERSION"
METRICS_SERVER_IMAGE="$IMAGE_PREFIX/metrics-server:$METRICS_SERVER_VERSION"
# Not an add-on: the object store the end-to-end tests run as a pod.
VERSITYGW_IMAGE="$IMAGE_PREFIX/versitygw:$VERSITYGW_VERSION"

# --- addresses -------------------------------------------------------------------------

ip_to_int() {
    local a b c d
    IFS=. read -r a b c d <<<"$1"
    for octet in "$a" "$b" "$c" "$d"; do
        [[ "$octet" =~ ^[0-9]+$ ]] && ((octet <= 255)) || return 1
    done
    echo $(((a << 24) | (b << 16) | (c << 8) | d))
}

# in_cidr IP CIDR: true when the IPv4 address IP lies inside CIDR.
in_cidr() {
    local ip net bits
    ip=$(ip_to_int "$1") || return 1
    net=$(ip_to_int "${2%/*}") || return 1
    bits=${2#*/}
    [[ "$bits" =~ ^[0-9]+$ ]] && ((bits <= 32)) || return 1
    local mask=$(((0xffffffff << (32 - bits)) & 0xffffffff))
    (((ip & mask) == (net & mask)))
}

check_addresses() {
    in_cidr "$CLUSTER_DNS_IP" "$SERVICE_CIDR" ||
        die "cluster DNS IP $CLUSTER_DNS_IP is not inside the Service CIDR $SERVICE_CIDR"
    [[ "$CLUSTER_DOMAIN" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$ ]] ||
        die "cluster domain '$CLUSTER_DOMAIN' is not a DNS name"
}

# --- manifests -------------------------------------------------------------------------

# render FILE: the manifest with its placeholders filled in; fails on one it does not know.
# shellcheck disable=SC2016 # the single-quoted ${...} are the placeholders, literally
render() {
    local text
    text=$(<"$1")
    text=${text//'${CLUSTER_DNS_IP}'/$CLUSTER_DNS_IP}
    text=${text//'${CLUSTER_DOMAIN}'/$CLUSTER_DOMAIN}
    text=${text//'${COREDNS_IMAGE}'/$COREDNS_IMAGE}
    text=${text//'${METRICS_SERVER_IMAGE}'/$METRICS_SERVER_IMAGE}
    if grep -n '\${[A-Za-z_][A-Za-z0-9_]*}' <<<"$text" >&2; then
        die "unknown placeholder in $1"
    fi
    printf '%s\n' "$text"
}

render_all() {
    check_addresses
    render "$MANIFEST_DIR/coredns.yaml"
    render "$MANIFEST_DIR/metrics-server.yaml"
}

# --- images ----------------------------------------------------------------------------

# build_image NAME VERSION SOURCE COMMIT DESCRIPTION: an image holding only $BIN_DIR/NAME as
# /NAME (its entrypoint), run as 65532:65532, plus an empty /tmp. Skipped when the image is
# there and was built from the same binary.
build_image() {
    local name=$1 version=$2 source=$3 commit=$4 description=$5
    local image="$IMAGE_PREFIX/$name:$version" bin="$BIN_DIR/$name" sha have ctr skel
    [[ -x "$bin" ]] || die "$bin is missing; run: hack/addons.sh build"
    sha=$(sha256sum "$bin" | cut -d' ' -f1)
    have=$(podman image inspect --format "{{ index .Labels \"$BINARY_LABEL\" }}" "$image" \
        2>/dev/null || true)
    if [[ "$have" == "$sha" ]]; then
        log "image $image is up to date (binary sha256 ${sha:0:12})"
        return 0
    fi
    local start=$SECONDS
    log "building image $image from $bin"
    skel=$(mktemp -d)
    ctr=$(buildah from --quiet scratch)
    # shellcheck disable=SC2064 # expand now: these are this image's container and directory
    trap "buildah rm '$ctr' >/dev/null 2>&1 || true; rm -rf '$skel'" RETURN
    # /tmp as a sticky, world-writable directory (buildah copy cannot make an empty one).
    mkdir -m 1777 "$skel/tmp"
    tar -C "$skel" -cf "$skel/skel.tar" --numeric-owner --owner=0 --group=0 tmp
    buildah add --quiet "$ctr" "$skel/skel.tar" / >/dev/null
    buildah copy --quiet --chmod 0755 "$ctr" "$bin" "/$name" >/dev/null
    buildah config \
        --entrypoint "[\"/$name\"]" \
        --user 65532:65532 \
        --workingdir / \
        --os linux --arch "$(go env GOARCH)" \
        --label "org.opencontainers.image.title=$name" \
        --label "org.opencontainers.image.description=$description" \
        --label "org.opencontainers.image.source=$source" \
        --label "org.opencontainers.image.version=$version" \
        --label "org.opencontainers.image.revision=$commit" \
        --label "org.opencontainers.image.licenses=Apache-2.0" \
        --label "$BINARY_LABEL=$sha" \
        "$ctr"
    buildah commit --quiet --rm "$ctr" "$image" >/dev/null
    log "built image $image in $((SECONDS - start))s ($(podman image inspect --format '{{.Size}}' "$image") bytes)"
}

# save_image IMAGE FILE: a docker-archive of IMAGE at FILE (what `ctr -n k8s.io images
# import` reads); skipped when FILE already holds this image ID.
save_image() {
    local image=$1 file=$2 id
    id=$(podman image inspect --format '{{.Id}}' "$image")
    if [[ -f "$file" && -f "$file.id" && "$(<"$file.id")" == "$id" ]]; then
        log "tarball $file is up to date"
        return 0
    fi
    mkdir -p "$(dirname "$file")"
    rm -f "$file.tmp" "$file.id"
    podman save --quiet --format docker-archive -o "$file.tmp" "$image"
    mv "$file.tmp" "$file"
    echo "$id" >"$file.id"
    log "saved $image to $file ($(du -h "$file" | cut -f1))"
}

cmd_images() {
    command -v buildah >/dev/null || die "buildah is not on PATH"
    command -v podman >/dev/null || die "podman is not on PATH"
    "$BUILD" >/dev/null
    build_image coredns "$COREDNS_VERSION" "https://$COREDNS_MODULE" "$COREDNS_COMMIT" \
        "CoreDNS, the cluster DNS server"
    build_image metrics-server "$METRICS_SERVER_VERSION" "https://github.com/kubernetes-sigs/metrics-server" \
        "$METRICS_SERVER_COMMIT" "metrics-server, the Kubernetes resource metrics API"
    build_image versitygw "$VERSITYGW_VERSION" "https://$VERSITYGW_MODULE" "$VERSITYGW_COMMIT" \
        "versitygw, an S3 gateway over a directory (the tests' object store)"
    local coredns_tar="$IMAGES_DIR/coredns-$COREDNS_VERSION.tar"
    local ms_tar="$IMAGES_DIR/metrics-server-$METRICS_SERVER_VERSION.tar"
    local vgw_tar="$IMAGES_DIR/versitygw-$VERSITYGW_VERSION.tar"
    save_image "$COREDNS_IMAGE" "$coredns_tar"
    save_image "$METRICS_SERVER_IMAGE" "$ms_tar"
    save_image "$VERSITYGW_IMAGE" "$vgw_tar"
    echo "$coredns_tar"
    echo "$ms_tar"
    echo "$vgw_tar"
}

# --- apply -----------------------------------------------------------------------------

# dns_query SERVER PORT NAME: the A records of NAME from the DNS server at SERVER:PORT (UDP),
# one a line; fails on no answer, an error rcode or no A record.
dns_query() {
    python3 - "$1" "$2" "$3" <<'EOF'
import random, socket, struct, sys

server, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
qid = random.randrange(1 << 16)
query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
query += b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
query += struct.pack(">HH", 1, 1)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(2)
sock.sendto(query, (server, port))
try:
    while True:
        data, _ = sock.recvfrom(4096)
        if struct.unpack(">H", data[:2])[0] == qid:
            break
except OSError as e:
    sys.exit(f"no answer from {server}:{port} ({e or 'timed out'})")
flags, qd, an = struct.unpack(">HHH", data[2:8])
if flags & 0xF:
    sys.exit(f"rcode {flags & 0xF}")

def skip_name(pos):
    while True:
        n = data[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:
            return pos + 2
        pos += n + 1

pos = 12
for _ in range(qd):
    pos = skip_name(pos) + 4
found = []
for _ in range(an):
    pos = skip_name(pos)
    rtype, _, _, rdlen = struct.unpack(">HHIH", data[pos:pos + 10])
    pos += 10
    if rtype == 1 and rdlen == 4:
        found.append(socket.inet_ntoa(data[pos:pos + 4]))
    pos += rdlen
if not found:
    sys.exit("no A record")
print("\n".join(found))
EOF
}

cmd_apply() {
    (($# == 2)) || die "usage: $0 apply KUBECONFIG KUBECTL"
    local kubeconfig=$1 kubectl=$2
    [[ -f "$kubeconfig" ]] || die "no kubeconfig at $kubeconfig"
    [[ -x "$kubectl" ]] || die "$kubectl is not executable"
    k() { "$kubectl" --kubeconfig "$kubeconfig" "$@"; }

    check_addresses
    local api_ip
    api_ip=$(k get service kubernetes -n default -o 'jsonpath={.spec.clusterIP}') ||
        die "cannot read Service default/kubernetes"
    in_cidr "$api_ip" "$SERVICE_CIDR" ||
        die "Service default/kubernetes has clusterIP $api_ip, outside $SERVICE_CIDR: is kube-apiserver's --service-cluster-ip-range $SERVICE_CIDR?"

    log "applying CoreDNS ($COREDNS_IMAGE, kube-dns at $CLUSTER_DNS_IP, domain $CLUSTER_DOMAIN)"
    render "$MANIFEST_DIR/coredns.yaml" | k apply -f -
    log "applying metrics-server ($METRICS_SERVER_IMAGE)"
    render "$MANIFEST_DIR/metrics-server.yaml" | k apply -f -

    wait_coredns
    if [[ "$DNS_CHECK" != 0 ]]; then
        check_dns "$api_ip"
    fi
    wait_metrics
    log "add-ons are up: kube-dns at $CLUSTER_DNS_IP, metrics.k8s.io serving"
}

# diagnose APP: what a reader needs when APP (a k8s-app label) did not come up.
diagnose() {
    local app=$1
    log "----- state of $app"
    k get nodes -o wide >&2 || true
    k -n "$NAMESPACE" get deployment,replicasets,pods,endpointslices -l "k8s-app=$app" -o wide >&2 || true
    k -n "$NAMESPACE" describe deployment -l "k8s-app=$app" >&2 || true
    k -n "$NAMESPACE" describe pods -l "k8s-app=$app" >&2 || true
    log "----- recent events in $NAMESPACE"
    k -n "$NAMESPACE" get events --sort-by=.lastTimestamp 2>/dev/null | tail -n 25 >&2 || true
    log "----- logs of $app"
    k -n "$NAMESPACE" logs -l "k8s-app=$app" --all-containers --tail=60 --prefix >&2 || true
    k -n "$NAMESPACE" logs -l "k8s-app=$app" --all-containers --tail=30 --prefix --previous \
        >&2 2>/dev/null || true
}

wait_coredns() {
    log "waiting up to ${TIMEOUT}s for CoreDNS to be Ready"
    if ! k -n "$NAMESPACE" rollout status deployment/coredns --timeout="${TIMEOUT}s" >&2; then
        diagnose kube-dns
        die "CoreDNS was not Ready within ${TIMEOUT}s (see above)"
    fi
}

# check_dns API_IP: kubernetes.default.svc resolves to API_IP through the kube-dns Service
# (kube-proxy's rules) from this host; on failure also asks the pod directly, to tell
# kube-proxy from CoreDNS.
check_dns() {
    local api_ip=$1 name="kubernetes.default.svc.$CLUSTER_DOMAIN" got="" deadline=$((SECONDS + 30))
    command -v python3 >/dev/null || { log "no python3 on PATH: skipping the DNS query"; return 0; }
    log "resolving $name at $CLUSTER_DNS_IP"
    until got=$(dns_query "$CLUSTER_DNS_IP" 53 "$name" 2>&1) && [[ "$got" == "$api_ip" ]]; do
        if ((SECONDS >= deadline)); then
            local pod_ip direct
            pod_ip=$(k -n "$NAMESPACE" get pods -l k8s-app=kube-dns \
                -o 'jsonpath={.items[0].status.podIP}' 2>/dev/null || true)
            direct=$(dns_query "${pod_ip:-0.0.0.0}" 1053 "$name" 2>&1 || true)
            log "through the Service ($CLUSTER_DNS_IP:53): ${got:-nothing}"
            log "straight from the pod (${pod_ip:-no pod IP}:1053): ${direct:-nothing}"
            diagnose kube-dns
            die "$name did not resolve to $api_ip through kube-dns within 30s"
        fi
        sleep 1
    done
    log "$name -> $got"
}

wait_metrics() {
    local deadline=$((SECONDS + TIMEOUT)) out count=0
    log "waiting up to ${TIMEOUT}s for metrics.k8s.io to list a node (takes two scrapes, 15s apart)"
    while ((SECONDS < deadline)); do
        if out=$(k get --raw /apis/metrics.k8s.io/v1beta1/nodes 2>/dev/null); then
            count=$(python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("items") or []))' \
                <<<"$out" 2>/dev/null || echo 0)
            ((count > 0)) && break
        fi
        sleep 3
    done
    if ((count == 0)); then
        log "----- APIService v1beta1.metrics.k8s.io"
        k get apiservice v1beta1.metrics.k8s.io -o wide >&2 || true
        k get apiservice v1beta1.metrics.k8s.io \
            -o 'jsonpath={range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}' >&2 || true
        log "last answer: ${out:-none}"
        diagnose metrics-server
        die "metrics.k8s.io listed no node within ${TIMEOUT}s (see above)"
    fi
    log "metrics.k8s.io lists $count node(s)"
}

case "${1:-}" in
build)
    shift
    exec "$BUILD" "$@"
    ;;
images)
    cmd_images
    ;;
render)
    render_all
    ;;
apply)
    shift
    cmd_apply "$@"
    ;;
*)
    sed -n '/^# Usage:/,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
