"""The script a user would write with the official SDK: 32 threads, one create per manifest.

Usage: ``python bench/sdk_client.py DIR ENDPOINT [--threads N]``; AK/SK and project id from
``HUAWEICLOUD_SDK_AK``/``_SK``/``_PROJECT_ID``. Prints one JSON line: created and failed counts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkdli.v1 import CreateFlinkJarJobRequest, CreateFlinkJarJobRequestBody, DliClient


def make_client(endpoint: str, threads: int) -> Any:
    """One shared SDK client; its connection pool sized to the threads (default is 10)."""
    config = HttpConfig.get_default_config()
    config.pool_maxsize = threads
    credentials = BasicCredentials(
        os.environ["HUAWEICLOUD_SDK_AK"],
        os.environ["HUAWEICLOUD_SDK_SK"],
        os.environ["HUAWEICLOUD_SDK_PROJECT_ID"],
    )
    return (
        DliClient.new_builder()
        .with_http_config(config)
        .with_credentials(credentials)
        .with_endpoints([endpoint])
        .build()
    )


def main() -> int:
    """Create one job per manifest file; exit 0 when every create succeeded."""
    parser = argparse.ArgumentParser()
    parser.add_argument("directory", type=Path)
    parser.add_argument("endpoint")
    parser.add_argument("--threads", type=int, default=32)
    args = parser.parse_args()
    client = make_client(args.endpoint, args.threads)

    def submit(path: Path) -> bool:
        fields = json.loads(path.read_text())
        body = CreateFlinkJarJobRequestBody(**fields)
        try:
            client.create_flink_jar_job(CreateFlinkJarJobRequest(body=body))
        except Exception as exc:  # the SDK raises its own exception types per failure
            print(f"{path.name}: {exc}", file=sys.stderr)
            return False
        return True

    paths = sorted(args.directory.glob("*.json"))
    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        created = sum(pool.map(submit, paths))
    print(json.dumps({"created": created, "failed": len(paths) - created}))
    return 0 if created == len(paths) else 1


if __name__ == "__main__":
    raise SystemExit(main())
