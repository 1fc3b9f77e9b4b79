import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fakekube.fixtures import fake_kube, kubelet  # noqa: E402,F401
