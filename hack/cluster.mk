# Local Kubernetes control plane (see hack/README.md). Included by the root Makefile.
CLUSTER_HACK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
CLUSTER_SH := $(CLUSTER_HACK_DIR)/cluster.sh
CLUSTER_BUILD := $(CLUSTER_HACK_DIR)/build-cluster-binaries.sh

cluster-binaries: ## build etcd, kube-*, kubectl, kwok and helm into the version-keyed cache
	@$(CLUSTER_BUILD) >/dev/null

cluster-up: cluster-binaries ## start the local control plane (no-op when it runs)
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
