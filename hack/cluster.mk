# Local Kubernetes control plane (see hack/README.md). Included by the root Makefile.
CLUSTER_HACK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
CLUSTER_SH := $(CLUSTER_HACK_DIR)/cluster.sh
CLUSTER_BUILD := $(CLUSTER_HACK_DIR)/build-cluster-binaries.sh

cluster-binaries: ## build etcd, kube-*, kubelet, kube-proxy, kwok, helm, CoreDNS, metrics-server (cached)
	@$(CLUSTER_BUILD) >/dev/null
	@$(CLUSTER_HACK_DIR)/build-addons.sh >/dev/null

cluster-up: cluster-binaries ## start the local cluster with its real node (no-op when it runs; root)
	@$(CLUSTER_SH) up

cluster-down: ## stop the local control plane (keeps its state)
	@$(CLUSTER_SH) down

cluster-kubeconfig: ## print the admin kubeconfig path
	@$(CLUSTER_SH) kubeconfig

cluster-status: ## show the control plane's processes, ports and readiness
	@$(CLUSTER_SH) status

cluster-clean: ## stop the control plane and delete its state directory
	@$(CLUSTER_SH) clean

.PHONY: cluster-binaries cluster-up cluster-down cluster-kubeconfig cluster-status cluster-clean
