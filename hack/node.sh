# The real node of the local cluster: containerd + runc + a CNI bridge, kubelet and kube-proxy
# (iptables mode), on this host. Sourced by hack/cluster.sh, whose helpers it uses (log, die,
# start_component, stop_component, wait_for, sign_cert, kubectl_ ...).
#
# Everything it creates on the host carries the prefix "sg-" (links, the iptables chain
# SG-GUARD, /run/sg-node, cgroups under /sg-node), or lives under $STATE/node, so that a run
# killed half way can be cleaned up by name without touching anything else. One real node per
# host: links, chains and the kubelet's port are host-wide.
#
# Addresses: everything the cluster uses lies in the benchmarking block 198.18.0.0/15, and the
# host gets an `unreachable` route for the whole block, so that an address nothing local backs
# fails at once instead of leaving the machine. Longer routes carve out what is backed:
#   198.19.0.1/32      the host on the bridge sg-host0 (API server, kubelet, node IP)
#   198.18.0.0/20      pods of the real node, bridge sg-cni0 (gateway .1)
#   198.18.16.0/20     pods of kwok's nodes (never answer: unreachable)
#   198.18.32.1        kwok's node IP (unreachable)
#   198.18.128.0/20    Services (routed to sg-host0 so that kube-proxy's DNAT in OUTPUT applies;
#                      SG-GUARD rejects what no Service rule rewrote)

NODE_NAME=${SHOPPING_GUIDE_NODE_NAME:-real-0}
HOST_LINK=sg-host0
HOST_IP=198.19.0.1
POD_BRIDGE=sg-cni0
POD_CIDR=198.18.0.0/20
POD_GATEWAY=198.18.0.1
KWOK_POD_CIDR=198.18.16.0/20
KWOK_NODE_IP=198.18.32.1
CLUSTER_RANGE=198.18.0.0/15
CLUSTER_DNS=198.18.128.10
GUARD_CHAIN=SG-GUARD
NODE_DIR="$STATE/node"
# Sockets want short paths (108 bytes), and the runtime state belongs in /run.
RUN_DIR=/run/sg-node
CGROUP_ROOT=sg-node
PAUSE_IMAGE=localhost/shopping-guide/pause:${K8S_PAUSE_TAG:-3.10}
KUBELET_PORT=10250
# Host settings that kubelet, kube-proxy or the bridge change; restored by node_down.
NODE_SYSCTLS=(net.ipv4.ip_forward vm.overcommit_memory kernel.panic kernel.panic_on_oops
    net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
    net.ipv4.conf.all.route_localnet)
NODE_PACKAGES="containerd runc containernetworking-plugins iptables conntrack iproute2 buildah podman"

containerd_bin() { command -v containerd || echo /usr/bin/containerd; }
cni_bin_dir() {
    local d
    for d in /usr/lib/cni /opt/cni/bin; do
        [[ -x "$d/bridge" && -x "$d/host-local" && -x "$d/loopback" ]] && { echo "$d"; return; }
    done
    return 1
}

node_check_host() {
    [[ $(id -u) == 0 ]] || die "the real node needs root (kubelet, containerd, iptables)"
    local missing=() c
    for c in "$(containerd_bin)" runc ctr ip iptables iptables-save conntrack buildah podman; do
        command -v "$c" >/dev/null || missing+=("$c")
    done
    cni_bin_dir >/dev/null || missing+=(cni-plugins)
    ((${#missing[@]} == 0)) || die "missing for the real node: ${missing[*]}; install: apt-get install $NODE_PACKAGES (or make cluster-deps)"
    [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] ||
        die "br_netfilter is not loaded: Services between pods on the bridge cannot work"
}

# --- host network ------------------------------------------------------------------------

node_sysctls_save() {
    [[ -f "$NODE_DIR/sysctl.orig" ]] && return 0
    mkdir -p "$NODE_DIR"
    local k
    for k in "${NODE_SYSCTLS[@]}"; do
        [[ -e "/proc/sys/${k//.//}" ]] && echo "$k=$(sysctl -n "$k")"
    done >"$NODE_DIR/sysctl.orig.tmp"
    mv "$NODE_DIR/sysctl.orig.tmp" "$NODE_DIR/sysctl.orig"
}

node_sysctls_restore() {
    [[ -f "$NODE_DIR/sysctl.orig" ]] || return 0
    local line
    while read -r line; do
        sysctl -q -w "$line" >/dev/null || log "could not restore $line"
    done <"$NODE_DIR/sysctl.orig"
    rm -f "$NODE_DIR/sysctl.orig"
}

guard_rules() {
    # Service addresses that kube-proxy did not rewrite (nat runs before filter): refuse now.
    echo "-d $SERVICE_CIDR -p tcp -j REJECT --reject-with tcp-reset"
    echo "-d $SERVICE_CIDR -j REJECT --reject-with icmp-port-unreachable"
    # Pods talk to the cluster and to this host, never beyond.
    echo "-s $CLUSTER_RANGE ! -d $CLUSTER_RANGE -j REJECT --reject-with icmp-net-prohibited"
}

net_up() {
    node_sysctls_save
    if ! ip link show "$HOST_LINK" >/dev/null 2>&1; then
        ip link add "$HOST_LINK" type bridge
    fi
    ip addr replace "$HOST_IP/32" dev "$HOST_LINK"
    ip link set "$HOST_LINK" up
    ip route replace unreachable "$CLUSTER_RANGE"
    ip route replace "$SERVICE_CIDR" dev "$HOST_LINK" src "$HOST_IP"
    sysctl -q -w net.ipv4.ip_forward=1 >/dev/null
    sysctl -q -w net.bridge.bridge-nf-call-iptables=1 >/dev/null
    iptables -w -N "$GUARD_CHAIN" 2>/dev/null || iptables -w -F "$GUARD_CHAIN"
    local rule
    while read -r rule; do
        # shellcheck disable=SC2086 # a rule is a list of words
        iptables -w -A "$GUARD_CHAIN" $rule
    done < <(guard_rules)
    for chain in OUTPUT FORWARD; do
        iptables -w -C "$chain" -j "$GUARD_CHAIN" 2>/dev/null || iptables -w -I "$chain" 1 -j "$GUARD_CHAIN"
    done
}

net_down() {
    local chain
    for chain in OUTPUT FORWARD; do
        while iptables -w -D "$chain" -j "$GUARD_CHAIN" 2>/dev/null; do :; done
    done
    iptables -w -F "$GUARD_CHAIN" 2>/dev/null || true
    iptables -w -X "$GUARD_CHAIN" 2>/dev/null || true
    ip route del "$SERVICE_CIDR" dev "$HOST_LINK" 2>/dev/null || true
    ip route del unreachable "$CLUSTER_RANGE" 2>/dev/null || true
    local link
    for link in "$POD_BRIDGE" "$HOST_LINK"; do
        ip link show "$link" >/dev/null 2>&1 && ip link del "$link"
    done
    true
}

# --- certificates, configs -----------------------------------------------------------------

node_pki() {
    (
        umask 077
        local client="basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth"
        sign_cert ca "kubelet-$NODE_NAME" "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
        sign_cert ca "kubelet-serving-$NODE_NAME" "/O=system:nodes/CN=system:node:$NODE_NAME" \
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:$NODE_NAME,IP:$HOST_IP"
        sign_cert ca kube-proxy "/CN=system:kube-proxy" "$client"
        sign_cert ca apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
    )
}

node_configs() {
    mkdir -p "$NODE_DIR/cni" "$NODE_DIR/kubelet" "$NODE_DIR/containerd" "$RUN_DIR"
    write_kubeconfig "$NODE_DIR/kubelet.kubeconfig" "kubelet-$NODE_NAME"
    write_kubeconfig "$NODE_DIR/kube-proxy.kubeconfig" kube-proxy
    # Pods with dnsPolicy Default get this file: no host resolver reaches into the cluster.
    : >"$NODE_DIR/resolv.conf"
    cat >"$NODE_DIR/containerd.toml" <<EOF
version = 2
root = "$NODE_DIR/containerd"
state = "$RUN_DIR/containerd"
# No CAP_SYS_RESOURCE on every host: lowering oom_score_adj fails, and runc with it.
oom_score = 0
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "$RUN_DIR/containerd.sock"
[ttrpc]
  address = "$RUN_DIR/containerd.sock.ttrpc"
[debug]
  address = "$RUN_DIR/containerd-debug.sock"
  level = "warn"
[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$(cni_bin_dir)"
    conf_dir = "$NODE_DIR/cni"
    max_conf_num = 1
EOF
    # ipMasq off: nothing a pod sends may leave the machine, so there is nothing to masquerade.
    # No portmap plugin: nothing uses hostPort, and the bridge alone writes no iptables rules.
    cat >"$NODE_DIR/cni/10-sg-pods.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "sg-pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$POD_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$NODE_DIR/ipam"
      }
    }
  ]
}
EOF
    cat >"$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $HOST_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$PKI/kubelet-serving-$NODE_NAME.crt"
tlsPrivateKeyFile: "$PKI/kubelet-serving-$NODE_NAME.key"
containerRuntimeEndpoint: "unix://$RUN_DIR/containerd.sock"
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
failSwapOn: false
failCgroupV1: false
clusterDNS: ["$CLUSTER_DNS"]
clusterDomain: cluster.local
resolvConf: "$NODE_DIR/resolv.conf"
# Images come from local archives, never from a registry: the garbage collector must keep them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# A busy shared disk must not evict the cluster's pods.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
serializeImagePulls: false
maxPods: 110
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusUpdateFrequency: 5s
rotateCertificates: false
serverTLSBootstrap: false
enableDebuggingHandlers: true
podLogsDir: "$NODE_DIR/pod-logs"
EOF
    cat >"$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: "$NODE_DIR/kube-proxy.kubeconfig"
hostnameOverride: $NODE_NAME
bindAddress: $HOST_IP
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
mode: iptables
clusterCIDR: $POD_CIDR
nodePortAddresses: ["$HOST_IP/32"]
# Leave the host's conntrack settings alone, and do not open route_localnet.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  localhostNodePorts: false
EOF
}

node_cgroups_create() {
    local hierarchy
    for hierarchy in /sys/fs/cgroup/*/; do
        [[ -d "$hierarchy" && -w "$hierarchy" ]] || continue
        [[ "$hierarchy" == */unified/ ]] && continue
        mkdir -p "$hierarchy$CGROUP_ROOT" 2>/dev/null || true
    done
}

# Removes the cgroups under /sg-node in every hierarchy, deepest first; a cgroup with a live
# process refuses, which means something of ours still runs.
node_cgroups_remove() {
    local dir
    for dir in /sys/fs/cgroup/*/"$CGROUP_ROOT"; do
        [[ -d "$dir" ]] || continue
        find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
        [[ -d "$dir" ]] && log "could not remove cgroup $dir (still in use?)"
    done
    true
}

# --- images --------------------------------------------------------------------------------

ctr_() { ctr --address "$RUN_DIR/containerd.sock" --namespace k8s.io "$@"; }

# The sandbox image, from the pause binary the build script compiled.
pause_image_archive() {
    local archive="$NODE_DIR/images/pause.tar" c
    [[ -f "$archive" ]] && { echo "$archive"; return; }
    mkdir -p "$NODE_DIR/images"
    c=$(buildah from --quiet scratch)
    buildah copy --quiet "$c" "$BIN_DIR/pause" /pause >/dev/null
    buildah config --entrypoint '["/pause"]' --user 65535:65535 \
        --label org.opencontainers.image.source=https://github.com/kubernetes/kubernetes \
        --label org.opencontainers.image.licenses=Apache-2.0 "$c"
    buildah commit --quiet --rm "$c" "$PAUSE_IMAGE" >/dev/null
    podman save --quiet --format docker-archive -o "$archive.tmp" "$PAUSE_IMAGE"
    mv "$archive.tmp" "$archive"
    echo "$archive"
}

# node_load_image ARCHIVE: import a docker-archive (NAME-ID.tar) into the node's containerd;
# a no-op when the archive last imported for NAME has the same content. Keyed by the image's
# name, not by content alone: after A, then B, then A again under one tag, A is imported again.
node_load_image() {
    local archive=$1 sum stamp base
    sum=$(sha256sum "$archive" | cut -c1-16)
    base=$(basename "$archive" .tar)
    stamp="$NODE_DIR/images/last-${base%-*}"
    [[ -f "$stamp" && "$(<"$stamp")" == "$sum" ]] && return 0
    local start=$SECONDS
    ctr_ images import --snapshotter overlayfs - <"$archive" >/dev/null ||
        die "could not import $archive into the node"
    mkdir -p "$NODE_DIR/images"
    printf '%s' "$sum" >"$stamp"
    log "loaded $(basename "$archive") into $NODE_NAME in $((SECONDS - start))s"
}

# --- lifecycle ------------------------------------------------------------------------------

node_ready() {
    [[ "$(kubectl_ get node "$NODE_NAME" \
        -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

node_up() {
    node_check_host
    node_configs
    node_cgroups_create
    start_component containerd --config "$NODE_DIR/containerd.toml"
    wait_for "containerd" 60 containerd ctr_ version
    node_load_image "$(pause_image_archive)"
    start_component kubelet \
        --config="$NODE_DIR/kubelet.yaml" \
        --kubeconfig="$NODE_DIR/kubelet.kubeconfig" \
        --root-dir="$NODE_DIR/kubelet" \
        --hostname-override="$NODE_NAME" \
        --node-ip="$HOST_IP" \
        --node-labels="type=real,shoppingguide.io/node=real" \
        --v=1
    start_component kube-proxy --config="$NODE_DIR/kube-proxy.yaml" --v=1
    wait_for "node $NODE_NAME Ready" 120 kubelet node_ready
    wait_for "kube-proxy /healthz" 60 kube-proxy \
        curl -sf --max-time 5 "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz"
}

# Stops pods first (so that containerd's shims and the kubelet's mounts go away), then the
# node's processes, then removes what they left on the host.
node_down() {
    if component_running kubelet; then
        stop_component kubelet
    fi
    if component_running containerd; then
        # Stop every pod sandbox so that runc and the CNI plugin tear down what they set up.
        local ids
        ids=$(ctr_ tasks ls -q 2>/dev/null || true)
        local id
        for id in $ids; do ctr_ tasks kill -s KILL "$id" >/dev/null 2>&1 || true; done
        sleep 1
        for id in $ids; do ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true; done
    fi
    stop_component kube-proxy
    stop_component containerd
    node_cleanup
}

# PIDs of containerd shims and container processes of this node (the shims outlive containerd).
node_shim_pids() {
    local dir pid cmd
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        cmd=$(tr '\0' ' ' 2>/dev/null <"$dir/cmdline") || continue
        [[ "$cmd" == *containerd-shim* && "$cmd" == *"$RUN_DIR/containerd.sock"* ]] && echo "$pid"
    done
    true
}

# Processes in the node's cgroups (containers whose shim is gone).
node_cgroup_pids() {
    local f
    for f in /sys/fs/cgroup/pids/"$CGROUP_ROOT" /sys/fs/cgroup/memory/"$CGROUP_ROOT"; do
        [[ -d "$f" ]] || continue
        find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null
    done | sort -u
}

# Removes what a node of this state directory left behind, whether it stopped cleanly or was
# killed: shims and containers, mounts under its directories, network namespaces of its pods,
# iptables chains of kube-proxy and kubelet, cgroups. Touches nothing that is not named after it
# or kept under its directories (KUBE-* chains: one Kubernetes node per host).
node_cleanup() {
    local pid pids
    pids="$(node_shim_pids) $(node_cgroup_pids)"
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
    [[ -n "${pids// /}" ]] && sleep 1
    # Network namespaces of our pods: the CNI plugin names them cni-*, and each holds an
    # address of our pod range.
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
        [[ "$ns" == cni-* ]] || continue
        if ip netns exec "$ns" ip -4 -o addr show 2>/dev/null | grep ' inet 198\.1[89]\.' >/dev/null; then
            ip netns delete "$ns" 2>/dev/null || true
        fi
    done
    # Mounts under the node's directories, deepest first (kubelet bind-mounts its root dir,
    # containerd its rootfs and shm mounts, the CNI its netns files under /run/netns).
    local m
    for m in $(awk -v a="$NODE_DIR" -v b="$RUN_DIR" \
        'index($5, a) == 1 || index($5, b) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    if [[ -x "$BIN_DIR/kube-proxy" ]]; then
        "$BIN_DIR/kube-proxy" --cleanup >/dev/null 2>&1 || true
    fi
    kube_chains_remove
    node_cgroups_remove
    rm -rf "$RUN_DIR"
}

# After the control plane has stopped too (the API server listens on the host link).
host_cleanup() {
    net_down
    node_sysctls_restore
    conntrack -D -s "$CLUSTER_RANGE" >/dev/null 2>&1 || true
    conntrack -D -d "$CLUSTER_RANGE" >/dev/null 2>&1 || true
}

# The KUBE-* chains kubelet (and kube-proxy, where --cleanup missed one) create, in every
# table, for IPv4 and IPv6.
kube_chains_remove() {
    local tool table chain
    for tool in iptables ip6tables; do
        command -v "$tool" >/dev/null || continue
        for table in filter nat mangle raw; do
            "$tool-save" -t "$table" 2>/dev/null | grep . >/dev/null || continue
            # Jumps from built-in chains first, then the chains themselves.
            "$tool-save" -t "$table" 2>/dev/null | awk '/^-A [A-Z]+ .*-j KUBE-/' |
                while read -r _ chain rest; do
                    # eval: the rule keeps iptables-save's quoting (comments with spaces).
                    eval "\"\$tool\" -w -t \"\$table\" -D \"\$chain\" $rest" 2>/dev/null || true
                done
            for chain in $("$tool-save" -t "$table" 2>/dev/null | awk '/^:KUBE-/ {print substr($1, 2)}'); do
                "$tool" -w -t "$table" -F "$chain" 2>/dev/null || true
            done
            for chain in $("$tool-save" -t "$table" 2>/dev/null | awk '/^:KUBE-/ {print substr($1, 2)}'); do
                "$tool" -w -t "$table" -X "$chain" 2>/dev/null || true
            done
        done
    done
}
