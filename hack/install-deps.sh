#!/usr/bin/env bash
# Installs the Debian packages the local cluster, the image builds and the tests need, when
# they are missing. Needs root and apt-get (Debian bookworm or a derivative).
#
#   containerd runc containernetworking-plugins   the real node's runtime and pod network
#   iptables conntrack iproute2                   kube-proxy, the address guard, cleanup
#   podman buildah mmdebstrap uidmap              images without a Docker engine
#   gcc libc6-dev                                 the node's static pause binary
#   openssl curl                                  certificates, readiness probes
#   wrk                                           serving benchmark
set -euo pipefail

PACKAGES=(containerd runc containernetworking-plugins iptables conntrack iproute2
    podman buildah mmdebstrap uidmap gcc libc6-dev openssl curl ca-certificates make
    xz-utils wrk)

if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "install as root with apt-get: ${PACKAGES[*]}" >&2
    exit 1
fi
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" >/dev/null || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
    echo "[install-deps] all ${#PACKAGES[@]} packages present" >&2
    exit 0
fi
echo "[install-deps] installing: ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
