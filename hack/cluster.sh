#!/usr/bin/env bash
# A local Kubernetes cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# one real node (containerd, kubelet, kube-proxy; hack/node.sh) with CoreDNS and metrics-server,
# and kwok's fake nodes for scale tests, built by hack/build-cluster-binaries.sh. Needs root.
#
# Usage: hack/cluster.sh up|down|status|kubeconfig|env|restart-apiserver|clean
#   up                 start what is not running (idempotent), wait until usable
#   down               stop the processes this script started (state and data are kept)
#   status             show components, ports and readiness (exit 1 unless all are up)
#   kubeconfig         print the admin kubeconfig path
#   env                print `export KUBECONFIG=...; export PATH=...` for eval
#   restart-apiserver  stop and start kube-apiserver only (data stays in etcd)
#   load-images        import the project's built images (make images) into the running node
#   cleanup            remove what a killed run left on the host (nothing may be running)
#   clean              down, then delete the state directory
#
# Environment: SHOPPING_GUIDE_CLUSTER_DIR (state, default <repo>/.cluster),
#              SHOPPING_GUIDE_K8S_BIN (binaries, default: the build script's cache dir),
#              SHOPPING_GUIDE_KWOK_NODES (number of fake nodes, default 2).
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HACK_DIR/.." && pwd)
STATE=${SHOPPING_GUIDE_CLUSTER_DIR:-$REPO/.cluster}
BIN_DIR=${SHOPPING_GUIDE_K8S_BIN:-$("$HACK_DIR/build-cluster-binaries.sh" --bin-dir)}
KWOK_NODES=${SHOPPING_GUIDE_KWOK_NODES:-2}

PKI="$STATE/pki"
PID_DIR="$STATE/pids"
LOG_DIR="$STATE/logs"
PORTS_FILE="$STATE/ports.env"
KUBECONFIG_FILE="$STATE/kubeconfig"
SERVICE_CIDR=198.18.128.0/20
SERVICE_FIRST_IP=198.18.128.1
# Bumped when addresses or certificates change shape: an older state directory is wiped.
LAYOUT=2
SA_ISSUER=https://kubernetes.default.svc.cluster.local
# Stop order; start order is the reverse.
COMPONENTS=(kube-proxy kubelet containerd kwok kube-scheduler kube-controller-manager kube-apiserver etcd)
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kubelet kube-proxy pause)

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

kubectl_() { "$BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# shellcheck source=hack/node.sh
source "$HACK_DIR/node.sh"

component_bin() {
    case $1 in
        containerd) containerd_bin ;;
        *) echo "$BIN_DIR/$1" ;;
    esac
}

# --- processes -------------------------------------------------------------------------

# A component is running when its recorded PID still runs the recorded command line
# (guards against PID reuse; a zombie has an empty command line).
component_pid() {
    local name=$1 pid
    [[ -f "$PID_DIR/$name.pid" && -f "$PID_DIR/$name.cmdline" ]] || return 1
    pid=$(<"$PID_DIR/$name.pid")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    # Compared as text: cmp trusts the size of /proc files, which is always 0.
    local now recorded
    now=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline") || return 1
    recorded=$(tr '\0' '\n' <"$PID_DIR/$name.cmdline")
    [[ -n "$now" && "$now" == "$recorded" ]] || return 1
    echo "$pid"
}

component_running() { component_pid "$1" >/dev/null; }

# start_component NAME ARGS...: runs $BIN_DIR/NAME in its own session, logs appended to
# $LOG_DIR/NAME.log, and records its PID and command line.
start_component() {
    local name=$1; shift
    local bin pid exe i
    bin=$(component_bin "$name")
    if component_running "$name"; then
        log "$name already running (pid $(component_pid "$name"))"
        return 0
    fi
    mkdir -p "$PID_DIR" "$LOG_DIR"
    printf '\n===== %s starting %s\n' "$(date -u +%FT%TZ)" "$name" >>"$LOG_DIR/$name.log"
    # fd 9 is the state lock: the long-lived process must not inherit it.
    KWOK_WORKDIR="$STATE/kwok" setsid "$bin" "$@" </dev/null >>"$LOG_DIR/$name.log" 2>&1 9>&- &
    pid=$!
    # The command line setsid execs, recorded as we know it rather than read from /proc: in
    # the middle of an exec, /proc/PID/exe already names the new binary while
    # /proc/PID/cmdline is still empty, and an empty record would never match again.
    printf '%s\0' "$bin" "$@" >"$PID_DIR/$name.cmdline"
    exe=$(readlink -f "$bin")
    for ((i = 0; i < 100; i++)); do
        if [[ "$(readlink "/proc/$pid/exe" 2>/dev/null || true)" == "$exe" ]]; then
            echo "$pid" >"$PID_DIR/$name.pid"
            component_running "$name" && break
        fi
        sleep 0.05
    done
    component_running "$name" ||
        { tail -n 20 "$LOG_DIR/$name.log" >&2; die "$name did not start"; }
    log "started $name (pid $pid, log $LOG_DIR/$name.log)"
}

stop_component() {
    local name=$1 pid i
    if ! pid=$(component_pid "$name"); then
        rm -f "$PID_DIR/$name.pid" "$PID_DIR/$name.cmdline"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        component_running "$name" || break
        sleep 0.1
    done
    if component_running "$name"; then
        log "$name (pid $pid) ignored SIGTERM for 30s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            component_running "$name" || break
            sleep 0.1
        done
    fi
    rm -f "$PID_DIR/$name.pid" "$PID_DIR/$name.cmdline"
    log "stopped $name (pid $pid)"
}

# wait_for DESCRIPTION TIMEOUT_SECONDS COMPONENT COMMAND...: polls COMMAND; fails early
# when COMPONENT dies, showing the end of its log.
wait_for() {
    local desc=$1 timeout=$2 component=$3; shift 3
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if [[ -n "$component" ]] && ! component_running "$component"; then
            tail -n 30 "$LOG_DIR/$component.log" >&2 || true
            die "$component exited while waiting for $desc"
        fi
        if ((SECONDS >= deadline)); then
            [[ -n "$component" ]] && { tail -n 30 "$LOG_DIR/$component.log" >&2 || true; }
            die "timed out after ${timeout}s waiting for $desc"
        fi
        sleep 0.5
    done
}

# PIDs of processes that run one of our binaries on this state directory but are not
# recorded (left over by a run that was killed, say). They would hold etcd's data directory.
stray_pids() {
    local dir pid cmd exe recorded=" " c
    for c in "${COMPONENTS[@]}"; do
        if pid=$(component_pid "$c"); then recorded+="$pid "; fi
    done
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        [[ "$recorded" == *" $pid "* ]] && continue
        exe=$(readlink "$dir/exe" 2>/dev/null) || continue
        [[ "$exe" == "$BIN_DIR"/* || "$exe" == "$(containerd_bin)" ]] || continue
        cmd=$(tr '\0' ' ' 2>/dev/null <"$dir/cmdline") || continue
        [[ "$cmd" == *"$STATE/"* ]] && echo "$pid"
    done
}

# --- ports -----------------------------------------------------------------------------

# Local ports of every TCP socket on the host, in any state.
ports_in_use() {
    local file sl local_addr
    for file in /proc/net/tcp /proc/net/tcp6; do
        [[ -r "$file" ]] || continue
        while read -r sl local_addr _; do
            [[ "$sl" == sl ]] && continue
            echo $((16#${local_addr##*:}))
        done <"$file"
    done
}

# Picks free ports below the kernel's ephemeral range so that outgoing connections do not
# take them between `up` and the moment a component binds, and below kube-proxy's NodePort
# range (30000-32767).
choose_ports() {
    local -A taken=()
    local p names=(ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHEDULER_PORT KWOK_PORT
        KUBELET_HEALTHZ_PORT PROXY_HEALTHZ_PORT PROXY_METRICS_PORT)
    local name
    while read -r p; do taken[$p]=1; done < <(ports_in_use)
    : >"$PORTS_FILE.tmp"
    for name in "${names[@]}"; do
        while :; do
            p=$((20000 + RANDOM % 10000))
            [[ -z "${taken[$p]:-}" ]] && break
        done
        taken[$p]=1
        echo "$name=$p" >>"$PORTS_FILE.tmp"
    done
    mv "$PORTS_FILE.tmp" "$PORTS_FILE"
}

load_ports() {
    [[ -f "$PORTS_FILE" ]] || die "no $PORTS_FILE: run '$0 up' first"
    # shellcheck source=/dev/null
    source "$PORTS_FILE"
}

# --- certificates and kubeconfigs ------------------------------------------------------

openssl_conf() {
    cat >"$PKI/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
EOF
}

gen_ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# make_ca NAME CN: a self-signed CA, NAME.key and NAME.crt (kept when present).
make_ca() {
    local name=$1 cn=$2
    [[ -f "$PKI/$name.crt" ]] && return 0
    gen_ec_key "$PKI/$name.key"
    openssl req -x509 -new -config "$PKI/openssl.cnf" -extensions ca_ext -key "$PKI/$name.key" \
        -subj "/CN=$cn" -days 3650 -out "$PKI/$name.crt"
}

# sign_cert CA NAME SUBJECT EXTENSIONS: NAME.key and NAME.crt signed by CA (kept when present).
sign_cert() {
    local ca=$1 name=$2 subject=$3 extensions=$4
    [[ -f "$PKI/$name.crt" ]] && return 0
    gen_ec_key "$PKI/$name.key"
    openssl req -new -config "$PKI/openssl.cnf" -key "$PKI/$name.key" -subj "$subject" \
        -out "$PKI/$name.csr"
    printf '%b\n' "$extensions" >"$PKI/$name.ext"
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days 3650 -extfile "$PKI/$name.ext" \
        -out "$PKI/$name.crt.tmp" 2>/dev/null
    mv "$PKI/$name.crt.tmp" "$PKI/$name.crt"
    rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

# Creates whatever is missing, so that a state directory from an older script is completed.
ensure_pki() {
    if [[ ! -f "$PKI/ca.crt" ]]; then
        log "generating certificates in $PKI"
        rm -rf "$PKI"
    fi
    mkdir -p "$PKI"
    chmod 700 "$PKI"
    (
        umask 077
        openssl_conf
        local client="basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth"
        local sans="DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
        sans+=",DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$HOST_IP,IP:$SERVICE_FIRST_IP"
        make_ca ca shopping-guide-local-ca
        sign_cert ca apiserver "/CN=kube-apiserver" \
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=$sans"
        sign_cert ca admin "/O=system:masters/CN=shopping-guide-admin" "$client"
        sign_cert ca kube-controller-manager "/CN=system:kube-controller-manager" "$client"
        sign_cert ca kube-scheduler "/CN=system:kube-scheduler" "$client"
        # Request-header (front proxy) CA: lets controllers and aggregated API servers trust
        # requests that kube-apiserver proxies to them.
        make_ca front-proxy-ca shopping-guide-front-proxy-ca
        sign_cert front-proxy-ca front-proxy-client "/CN=front-proxy-client" "$client"
        node_pki
        if [[ ! -f "$PKI/sa.pub" ]]; then
            openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
            openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
        fi
    )
}

b64() { base64 -w0 <"$1"; }

# write_kubeconfig FILE CERT_NAME: a self-contained kubeconfig for the client cert CERT_NAME.
write_kubeconfig() {
    local file=$1 user=$2
    (
        umask 077
        cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: shopping-guide
  cluster:
    server: https://$HOST_IP:$APISERVER_PORT
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(b64 "$PKI/$user.crt")
    client-key-data: $(b64 "$PKI/$user.key")
contexts:
- name: shopping-guide
  context:
    cluster: shopping-guide
    user: $user
current-context: shopping-guide
EOF
    )
    mv "$file.tmp" "$file"
}

write_kubeconfigs() {
    write_kubeconfig "$KUBECONFIG_FILE" admin
    write_kubeconfig "$STATE/kube-controller-manager.kubeconfig" kube-controller-manager
    write_kubeconfig "$STATE/kube-scheduler.kubeconfig" kube-scheduler
}

# --- components ------------------------------------------------------------------------

start_etcd() {
    start_component etcd \
        --name=shopping-guide \
        --data-dir="$STATE/etcd" \
        --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster="shopping-guide=http://127.0.0.1:$ETCD_PEER_PORT" \
        --unsafe-no-fsync \
        --quota-backend-bytes=4294967296 \
        --log-level=warn
    wait_for "etcd health" 60 etcd \
        curl -sf --max-time 5 "http://127.0.0.1:$ETCD_PORT/health"
}

apiserver_ready() {
    curl -sf --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
        "https://$HOST_IP:$APISERVER_PORT/readyz"
}

# It listens on the host's cluster address only (nothing on the host's other interfaces), and
# advertises it, so the kubernetes Service has an endpoint that pods reach.
# --kubelet-*: logs, exec and port-forward through the node's kubelet, by its IP (node names do
# not resolve). --enable-aggregator-routing: metrics-server is reached at its pod IP.
# --shutdown-send-retry-after: on SIGTERM, wait 2s (not 60s) for open watch connections.
start_apiserver() {
    start_component kube-apiserver \
        --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
        --bind-address="$HOST_IP" \
        --advertise-address="$HOST_IP" \
        --secure-port="$APISERVER_PORT" \
        --cert-dir="$PKI" \
        --tls-cert-file="$PKI/apiserver.crt" \
        --tls-private-key-file="$PKI/apiserver.key" \
        --client-ca-file="$PKI/ca.crt" \
        --authorization-mode=Node,RBAC \
        --service-account-issuer="$SA_ISSUER" \
        --service-account-key-file="$PKI/sa.pub" \
        --service-account-signing-key-file="$PKI/sa.key" \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
        --requestheader-allowed-names=front-proxy-client \
        --requestheader-username-headers=X-Remote-User \
        --requestheader-group-headers=X-Remote-Group \
        --requestheader-extra-headers-prefix=X-Remote-Extra- \
        --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
        --proxy-client-key-file="$PKI/front-proxy-client.key" \
        --endpoint-reconciler-type=lease \
        --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
        --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
        --kubelet-certificate-authority="$PKI/ca.crt" \
        --kubelet-preferred-address-types=InternalIP,Hostname \
        --enable-aggregator-routing=true \
        --shutdown-send-retry-after=true \
        --allow-privileged=true \
        --profiling=false
    wait_for "kube-apiserver /readyz" 180 kube-apiserver apiserver_ready
}

healthz() { curl -skf --max-time 5 "https://127.0.0.1:$1/healthz"; }

start_controller_manager() {
    local kc="$STATE/kube-controller-manager.kubeconfig"
    start_component kube-controller-manager \
        --kubeconfig="$kc" \
        --authentication-kubeconfig="$kc" \
        --authorization-kubeconfig="$kc" \
        --authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics \
        --bind-address=127.0.0.1 \
        --secure-port="$KCM_PORT" \
        --leader-elect=false \
        --controllers='*' \
        --use-service-account-credentials=true \
        --service-account-private-key-file="$PKI/sa.key" \
        --root-ca-file="$PKI/ca.crt" \
        --cluster-signing-cert-file="$PKI/ca.crt" \
        --cluster-signing-key-file="$PKI/ca.key" \
        --kube-api-qps=100 \
        --kube-api-burst=200 \
        --horizontal-pod-autoscaler-sync-period=5s \
        --horizontal-pod-autoscaler-downscale-stabilization=30s \
        --profiling=false
    wait_for "kube-controller-manager /healthz" 120 kube-controller-manager healthz "$KCM_PORT"
}

start_scheduler() {
    local kc="$STATE/kube-scheduler.kubeconfig"
    start_component kube-scheduler \
        --kubeconfig="$kc" \
        --authentication-kubeconfig="$kc" \
        --authorization-kubeconfig="$kc" \
        --authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics \
        --bind-address=127.0.0.1 \
        --secure-port="$SCHEDULER_PORT" \
        --leader-elect=false \
        --profiling=false
    wait_for "kube-scheduler /healthz" 120 kube-scheduler healthz "$SCHEDULER_PORT"
}

# kwok manages only nodes annotated kwok.x-k8s.io/node=fake; other nodes (a real,
# process-backed one, say) are left alone. No --config: kwok then uses its default stages
# (pods become Running and Ready, Job pods go on to Succeeded, deleted pods are removed).
# Node leases: without them kwok's only heartbeat is a status patch about once a minute, longer
# than the node controller's 50 s grace period. The node then goes NotReady now and then, the
# node controller marks its pods unready, and kwok, which readies a pod once, never readies them
# again: a Deployment on a fake node stops being available for good. 40 s is a kubelet's default.
start_kwok() {
    mkdir -p "$STATE/kwok"
    start_component kwok \
        --kubeconfig="$KUBECONFIG_FILE" \
        --manage-all-nodes=false \
        --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
        --cidr="$KWOK_POD_CIDR" \
        --node-ip="$KWOK_NODE_IP" \
        --node-lease-duration-seconds=40 \
        --server-address="127.0.0.1:$KWOK_PORT"
    wait_for "kwok /healthz" 60 kwok curl -sf --max-time 5 "http://127.0.0.1:$KWOK_PORT/healthz"
}

node_manifest() {
    local i
    for ((i = 0; i < KWOK_NODES; i++)); do
        cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: ""
spec:
  # Only what asks for a fake node lands here (scale tests); everything else runs on the real one.
  taints:
  - {key: kwok.x-k8s.io/node, value: fake, effect: NoSchedule}
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110", ephemeral-storage: 500Gi}
  capacity: {cpu: "32", memory: 256Gi, pods: "110", ephemeral-storage: 500Gi}
EOF
    done
}

all_nodes_ready() {
    local i
    for ((i = 0; i < KWOK_NODES; i++)); do
        [[ "$(kubectl_ get node "kwok-node-$i" \
            -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" == True ]] || return 1
    done
}

# --- subcommands -----------------------------------------------------------------------

check_binaries() {
    local b missing=()
    for b in "${BINARIES[@]}"; do
        [[ -x "$BIN_DIR/$b" ]] || missing+=("$b")
    done
    if ((${#missing[@]} > 0)); then
        log "missing in $BIN_DIR: ${missing[*]}"
        log "build them with: make cluster-binaries (or hack/build-cluster-binaries.sh)"
        exit 3
    fi
}

lock_state() {
    mkdir -p "$STATE"
    exec 9>"$STATE/.lock"
    flock -w 900 9 || die "could not lock $STATE/.lock"
}

link_binaries() {
    mkdir -p "$STATE/bin"
    local b
    for b in kubectl helm kwok; do
        [[ -x "$BIN_DIR/$b" ]] && ln -sfn "$BIN_DIR/$b" "$STATE/bin/$b"
    done
}

all_running() {
    local c
    for c in "${COMPONENTS[@]}"; do component_running "$c" || return 1; done
}

any_running() {
    local c
    for c in "${COMPONENTS[@]}"; do component_running "$c" && return 0; done
    return 1
}

cmd_up() {
    check_binaries
    lock_state
    if all_running && [[ -f "$PORTS_FILE" ]] && load_ports && apiserver_ready >/dev/null 2>&1; then
        log "already running; kubeconfig: $KUBECONFIG_FILE"
        # Rebuilt images still reach the node (a no-op for archives it has imported).
        load_project_images
        return 0
    fi
    local strays
    strays=$(stray_pids | tr '\n' ' ')
    if [[ -n "$strays" ]]; then
        log "processes not started by this state's records use $STATE: $strays"
        die "stop them (kill <pid>) or use another SHOPPING_GUIDE_CLUSTER_DIR"
    fi
    local fresh=false
    if ! any_running; then
        fresh=true
        if [[ -f "$STATE/layout" && "$(<"$STATE/layout")" != "$LAYOUT" ]] ||
            [[ ! -f "$STATE/layout" && -d "$STATE/etcd" ]]; then
            log "state in $STATE is of an older layout: starting from scratch"
            find "$STATE" -mindepth 1 -maxdepth 1 ! -name .lock -exec rm -rf {} +
        fi
        node_check_host
        # A run that was killed leaves pods, mounts, chains and links: remove them first.
        node_cleanup
        host_cleanup
        choose_ports
        echo "$LAYOUT" >"$STATE/layout"
    fi
    load_ports
    # A failed cold start leaves nothing behind.
    if [[ $fresh == true ]]; then
        trap 'rc=$?; if ((rc != 0)); then log "up failed; stopping what it started"; cmd_stop_all; fi' EXIT
    fi
    local start=$SECONDS
    ensure_pki
    write_kubeconfigs
    link_binaries
    net_up
    start_etcd
    start_apiserver
    start_controller_manager
    start_scheduler
    start_kwok
    node_manifest | kubectl_ apply -f - >/dev/null
    wait_for "nodes Ready" 180 kwok all_nodes_ready
    wait_for "ServiceAccount default/default" 120 kube-controller-manager \
        kubectl_ get serviceaccount default --namespace default
    node_up
    addons_up
    load_project_images
    trap - EXIT
    log "up in $((SECONDS - start))s: https://$HOST_IP:$APISERVER_PORT"
    log "kubeconfig: $KUBECONFIG_FILE   kubectl: $STATE/bin/kubectl"
}

cmd_stop_all() {
    local c
    node_down
    for c in "${COMPONENTS[@]}"; do stop_component "$c"; done
    host_cleanup
}

# CoreDNS and metrics-server (hack/addons.sh): images into the node, manifests applied, ready.
addons_up() {
    local archive
    while read -r archive; do
        [[ -n "$archive" ]] && node_load_image "$archive"
    done < <("$HACK_DIR/addons.sh" images)
    "$HACK_DIR/addons.sh" apply "$KUBECONFIG_FILE" "$BIN_DIR/kubectl" >/dev/null
}

# The project's images (make images), when built: everything of ours runs from them.
load_project_images() {
    local tag name archive
    for tag in $("$HACK_DIR/images.sh" --print-tags); do
        if ! podman image exists "$tag"; then
            log "image $tag not built (make images): not loaded"
            continue
        fi
        name=${tag##*/}
        archive=$("$HACK_DIR/images.sh" save "${name%%:*}")
        node_load_image "$archive"
    done
}

cmd_down() {
    lock_state
    if ! any_running; then
        log "not running"
    fi
    cmd_stop_all
}

cmd_restart_apiserver() {
    lock_state
    load_ports
    component_running kube-apiserver || die "kube-apiserver is not running"
    stop_component kube-apiserver
    start_apiserver
    log "kube-apiserver restarted (pid $(component_pid kube-apiserver))"
}

cmd_status() {
    local c pid i rc=0
    if [[ -f "$PORTS_FILE" ]]; then load_ports; fi
    declare -A port_of=(
        [etcd]=${ETCD_PORT:-} [kube-apiserver]=${APISERVER_PORT:-}
        [kube-controller-manager]=${KCM_PORT:-} [kube-scheduler]=${SCHEDULER_PORT:-}
        [kwok]=${KWOK_PORT:-}
    )
    echo "state:   $STATE"
    echo "bin:     $BIN_DIR"
    for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
        c=${COMPONENTS[$i]}
        if pid=$(component_pid "$c"); then
            printf '%-24s running  pid %-8s port %s\n' "$c" "$pid" "${port_of[$c]:-}"
        else
            printf '%-24s stopped\n' "$c"
            rc=1
        fi
    done
    local strays
    strays=$(stray_pids | tr '\n' ' ')
    if [[ -n "$strays" ]]; then
        echo "strays:  $strays(unrecorded processes on this state directory)"
        rc=1
    fi
    if [[ -n "${APISERVER_PORT:-}" ]] && apiserver_ready >/dev/null 2>&1; then
        echo "readyz:  ok (https://$HOST_IP:$APISERVER_PORT)"
        kubectl_ get nodes 2>/dev/null || true
    else
        echo "readyz:  not ready"
        rc=1
    fi
    return "$rc"
}

cmd_env() {
    # shellcheck disable=SC2016 # $PATH is for the shell that evaluates this line
    printf 'export KUBECONFIG=%q; export PATH=%q:"$PATH"\n' "$KUBECONFIG_FILE" "$BIN_DIR"
}

cmd_cleanup() {
    lock_state
    any_running && die "the cluster is running: use down"
    [[ -z "$(stray_pids)" ]] || die "processes of this state directory run unrecorded: $(stray_pids | tr '\n' ' ')"
    node_check_host
    node_cleanup
    host_cleanup
    log "host cleaned of stale cluster state"
}

cmd_clean() {
    cmd_down
    exec 9>&-
    rm -rf "$STATE"
    log "removed $STATE"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    kubeconfig) echo "$KUBECONFIG_FILE" ;;
    env) cmd_env ;;
    restart-apiserver) cmd_restart_apiserver ;;
    load-images) component_running containerd || die "the node is not running"; load_project_images ;;
    cleanup) cmd_cleanup ;;
    clean) cmd_clean ;;
    *)
        sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" >&2
        exit 2
        ;;
esac
