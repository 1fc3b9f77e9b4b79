import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fakekube.fixtures import cluster, fake_kube, kubelet, s3, s3_server  # noqa: E402,F401
