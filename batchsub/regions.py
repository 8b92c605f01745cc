"""The Huawei Cloud regions that offer DLI, and the endpoint of each, so that a typo in
``--region`` is caught at once instead of after a failed DNS lookup (or a wait).

The list is the official SDK's (``huaweicloudsdkdli`` 3.1.219, ``DliRegion``; a test checks
it against the installed SDK). A region not listed yet is reached with ``--endpoint URL``,
or with ``allow_unknown_region = true``.
"""

from __future__ import annotations

import difflib
import re

from batchsub.errors import ConfigError

DLI_REGIONS = frozenset(
    {
        "ae-ad-1",
        "af-north-1",
        "af-south-1",
        "ap-southeast-1",
        "ap-southeast-2",
        "ap-southeast-3",
        "ap-southeast-4",
        "cn-east-2",
        "cn-east-3",
        "cn-east-4",
        "cn-east-5",
        "cn-north-1",
        "cn-north-2",
        "cn-north-4",
        "cn-north-9",
        "cn-south-1",
        "cn-southwest-2",
        "eu-west-0",
        "eu-west-101",
        "la-north-2",
        "la-south-2",
        "me-east-1",
        "my-kualalumpur-1",
        "na-mexico-1",
        "ru-moscow-1",
        "ru-northwest-2",
        "sa-brazil-1",
        "tr-west-1",
    }
)
_EU_REGIONS = frozenset({"eu-west-101"})  # served under myhuaweicloud.eu
_REGION_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)+")


def endpoint_for(region: str, *, allow_unknown: bool = False) -> str:
    """DLI's endpoint in ``region``; ConfigError naming the fix for a region not known."""
    if region not in DLI_REGIONS and not (allow_unknown and _REGION_NAME.fullmatch(region)):
        raise ConfigError(_unknown(region, allow_unknown=allow_unknown))
    return f"https://dli.{region}.{domain_of(region)}"


def domain_of(region: str) -> str:
    """The domain Huawei Cloud's service endpoints of ``region`` live under."""
    return "myhuaweicloud.eu" if region in _EU_REGIONS else "myhuaweicloud.com"


def _unknown(region: str, *, allow_unknown: bool) -> str:
    if allow_unknown:  # not even shaped like a region name: it would make a wrong host name
        return f"--region {region!r} is not a region name (like cn-north-4); use --endpoint URL"
    near = difflib.get_close_matches(region.strip().lower(), DLI_REGIONS, n=1, cutoff=0.75)
    known = f"did you mean {near[0]}?" if near else "known: " + ", ".join(sorted(DLI_REGIONS))
    return (
        f"unknown region {region!r} ({known}); for a region not listed, pass --endpoint URL "
        "or set BATCHSUB_ALLOW_UNKNOWN_REGION=true"
    )
