"""Regions: each known one's endpoint as the official SDK has it; a typo caught at once."""

from __future__ import annotations

import pytest
from huaweicloudsdkdli.v1.region.dli_region import DliRegion

from batchsub.errors import ConfigError
from batchsub.regions import DLI_REGIONS, endpoint_for
from batchsub.settings import load_settings


def test_every_region_of_the_official_sdk_is_known_with_its_endpoint() -> None:
    sdk = {name: region.endpoints[0] for name, region in DliRegion.static_fields.items()}
    assert {name: endpoint_for(name) for name in DLI_REGIONS} == sdk
    assert endpoint_for("eu-west-101") == "https://dli.eu-west-101.myhuaweicloud.eu"


@pytest.mark.parametrize(
    ("region", "suggestion"),
    [
        ("cn-nort-4", "did you mean cn-north-4?"),
        ("cn-north4", "did you mean cn-north-4?"),
        ("CN-NORTH-4", "did you mean cn-north-4?"),
        ("ap-southeast-9", "did you mean ap-southeast-"),
        ("eu-west-1", "did you mean eu-west-"),
        ("no-such-region", "known: ae-ad-1, af-north-1"),
    ],
)
def test_an_unknown_region_is_refused_at_once_with_the_fix(region: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"region": region}).resolved_endpoint()
    message = str(caught.value)
    assert message.startswith(f"unknown region {region!r} (")
    assert suggestion in message
    assert "--endpoint URL" in message and "BATCHSUB_ALLOW_UNKNOWN_REGION" in message


def test_the_escape_hatches_reach_a_region_not_listed() -> None:
    endpoint = "https://dli.cn-north-99.example.com"
    assert load_settings({"region": "cn-north-99", "endpoint": endpoint}).resolved_endpoint() == (
        endpoint
    )
    allowed = load_settings({"region": "cn-north-99", "allow_unknown_region": True})
    assert allowed.resolved_endpoint() == "https://dli.cn-north-99.myhuaweicloud.com"
    with pytest.raises(ConfigError, match="not a region name"):
        load_settings({"region": "evil.com/x", "allow_unknown_region": True}).resolved_endpoint()
