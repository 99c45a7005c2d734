"""An S3-compatible API on the loopback, for the test of infra/README.md's S3 remote.

It is moto's server (its S3 backend behind werkzeug, over HTTP): MinIO and Ceph are not among
Debian's packages and nothing outside this machine can be reached. What is tested runs for
real against it, as against any S3-compatible endpoint: DVC's S3 remote (dvc-s3, s3fs,
aiobotocore) in `dvc push` and `dvc pull` subprocesses. The test reads the bucket back with
boto3, as an administrator of the bucket would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# the recipe's placeholder for a team's endpoint (infra/README.md), replaced by the loopback's
RECIPE_ENDPOINT = "https://minio.internal:9000"


@contextmanager
def s3_bucket(name: str) -> Iterator[tuple[str, object]]:
    """A bucket `name` on an S3 API served from this process on a free loopback port:
    (the endpoint URL, a boto3 client of it). Any credentials are accepted."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="administrator", aws_secret_access_key="administrator")
        client.create_bucket(Bucket=name)
        yield endpoint, client
    finally:
        server.stop()


def bucket_objects(client, bucket: str) -> dict[str, bytes]:
    """Every object of the bucket: key -> bytes."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def recipe_lines(infra_readme: Path, endpoint: str) -> list[str]:
    """The `dvc remote` commands of the README's S3 section, as written (comments cut), with
    the placeholder endpoint replaced by `endpoint`."""
    section = infra_readme.read_text().split("## S3-compatible DVC remote")[1].split("```")[1]
    lines = [line.split("#")[0].strip() for line in section.splitlines() if line.startswith("dvc remote")]
    return [line.replace(RECIPE_ENDPOINT, endpoint) for line in lines]
