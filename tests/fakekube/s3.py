"""An S3-compatible object store for tests: moto's server on 127.0.0.1, in this process, no docker.

It stands for the bucket a cluster's artifact store and DVC remote live in. Clients reach it as
they would reach AWS, through the standard configuration: an endpoint URL and (dummy)
credentials, so boto3, s3fs (fsspec) and DVC's S3 remote (dvc-s3, which uses s3fs) all work
unchanged. Pods run by the process kubelet reach it once the cluster exposes its port
(`cluster.expose_host_port(s3.port)`, see README.md).

Fixtures (import them from fakekube.fixtures):

* `s3_server` (session): one server for the whole session; `S3Server` below.
* `s3` (function): a fresh bucket for one test, with the AWS environment variables set for this
  process and its subprocesses (and removed afterwards): `S3Bucket` below.

Faults: `s3_server.down()` stops answering (connections are refused) and `up()` serves again on
the same port with every object kept, so a test can check what an outage does and that
nothing was lost.
"""
from __future__ import annotations

import logging
import socket
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

ACCESS_KEY = "fakekube-access-key"
SECRET_KEY = "fakekube-secret-key"
REGION = "us-east-1"


class S3Server:
    """moto's S3 on 127.0.0.1:<free port>. Buckets and objects live in moto's in-process
    backend, so they survive down()/up()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._requested_port = port
        self.port = 0
        self._server: Any = None
        self._lock = threading.Lock()

    # -- lifecycle

    def start(self) -> "S3Server":
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        with self._lock:
            if self._server is not None:
                return self
            port = self.port or self._requested_port
            server = ThreadedMotoServer(ip_address=self.host, port=port, verbose=False)
            server.start()
            self.port = server.get_host_and_port()[1]
            self._server = server
        return self

    def stop(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.stop()

    def down(self) -> None:
        """The object store goes away: the port refuses connections until up()."""
        self.stop()

    def up(self) -> None:
        self.start()

    @contextmanager
    def outage(self) -> Iterator[None]:
        self.down()
        try:
            yield
        finally:
            self.up()

    @property
    def is_up(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex((self.host, self.port)) == 0

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- how clients find it

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment an AWS client (boto3, s3fs, dvc-s3, a pod) needs to use this server:
        botocore reads AWS_ENDPOINT_URL_S3 (botocore >= 1.31), so no client needs code for it."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            # no instance-metadata lookups (they would time out: there is no network)
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options for this server, for code that takes them explicitly."""
        return {"key": ACCESS_KEY, "secret": SECRET_KEY, "client_kwargs": {"endpoint_url": self.endpoint_url,
                                                                         "region_name": REGION}}

    def client(self) -> Any:
        """A boto3 S3 client for this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def filesystem(self) -> Any:
        """An s3fs filesystem for this server (no instance cache: each call is a fresh client)."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options())

    # -- buckets

    def create_bucket(self, name: str | None = None) -> "S3Bucket":
        name = name or f"fakekube-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return S3Bucket(self, name)

    def delete_bucket(self, name: str) -> None:
        c = self.client()
        for page in c.get_paginator("list_object_versions").paginate(Bucket=name):
            for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                c.delete_object(Bucket=name, Key=v["Key"], VersionId=v["VersionId"])
        c.delete_bucket(Bucket=name)


@dataclass(frozen=True)
class S3Bucket:
    """One bucket on an S3Server."""

    server: S3Server
    name: str

    @property
    def url(self) -> str:
        return f"s3://{self.name}"

    @property
    def endpoint_url(self) -> str:
        return self.server.endpoint_url

    @property
    def port(self) -> int:
        return self.server.port

    def uri(self, key: str = "") -> str:
        return f"s3://{self.name}/{key.lstrip('/')}" if key else self.url

    def keys(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        for page in self.server.client().get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(out)

    def get(self, key: str) -> bytes:
        return self.server.client().get_object(Bucket=self.name, Key=key)["Body"].read()

    def put(self, key: str, data: bytes | str) -> None:
        self.server.client().put_object(Bucket=self.name, Key=key, Body=data.encode() if isinstance(data, str) else data)

    def env(self) -> dict[str, str]:
        return self.server.env()

