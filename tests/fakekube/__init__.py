"""Test support: a fake Kubernetes API server (server.py), a fake kubelet that moves Job status
along (kubelet.py) and pytest fixtures (fixtures.py). Generic over group/version/resource so
other areas (Leases for leader election, a FineTune CRD) can use it too."""
