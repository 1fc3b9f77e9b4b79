import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))  # the fakekube package
sys.path.insert(0, str(TESTS / "render"))  # render_sample

from fakekube.fixtures import fake_kube, kubelet, s3, s3_server  # noqa: E402,F401
