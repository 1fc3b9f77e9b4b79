"""Test support: a Kubernetes cluster for tests. A fake API server (server.py); a process
kubelet that really runs the pods it holds (process_kubelet.py, sandbox.py, netns.py); the Job,
JobSet, Deployment and ReplicaSet controllers around it (controllers.py); FakeCluster to hold
them together (cluster.py); moto's S3 for object storage (s3.py); the scripted FakeKubelet for
unit tests (kubelet.py); pytest fixtures (fixtures.py). README.md is the contract."""
