"""serverd's ``federation:`` section: the bounds a site sets on its fleet's rounds, offers
and history reach the objects it builds, and impossible ones are refused at load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edgefed.errors import ConfigError
from serverd.config import parse_config
from serverd.federation.config import FederationConfig
from serverd.federation.versions import VersionFiles

MODEL = {
    "name": "digits",
    "features": 64,
    "classes": list("0123456789"),
    "pixels": {"width": 8, "height": 8, "max_value": 16},
}


def _config(**fields: Any) -> FederationConfig:
    return FederationConfig.model_validate({"models": [MODEL], **fields})


def test_the_fleet_bounds_default_to_an_appliances_and_reach_each_federation(
    tmp_path: Path,
) -> None:
    config = _config()
    assert (config.max_participants, config.max_devices, config.history_listed_rounds) == (
        1000,
        10_000,
        20,
    )
    (fed,) = _config(max_participants=40, history_listed_rounds=5).federations(
        VersionFiles(tmp_path)
    )
    assert fed.settings.max_participants == 40 and fed.listed_rounds == 5


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"max_participants": 10_001}, "less than or equal to 10000"),
        ({"max_participants": 2}, "min_clients must be <= max_participants"),
        ({"max_devices": 0}, "greater than or equal to 1"),
        ({"history_listed_rounds": 1001}, "less than or equal to 1000"),
    ],
    ids=["more-than-a-round-message-names", "fewer-than-min-clients", "no-device", "past-1000"],
)
def test_bounds_a_round_or_the_history_cannot_keep_are_refused_at_load(
    fields: dict[str, int], reason: str
) -> None:
    with pytest.raises(ValidationError, match=reason):
        _config(**fields)


def test_update_chunks_larger_than_the_brokers_packet_limit_are_refused_at_load() -> None:
    """An edge's chunk over the broker's limit would be refused by its adapter every time
    (or, not told of the limit, wedge its link): AWS IoT Core takes 128 KB, the default
    chunk is 256 KiB."""
    raw: dict[str, Any] = {
        "mqtt": {"client_id": "serverd", "max_packet_bytes": 131_072},
        "triton": {"instances": 0},
        "endpoints": [{"name": "npu", "url": "127.0.0.1:8001"}],
        "federation": {"enabled": True, "signing_key": "/etc/keys/fed.key", "models": [MODEL]},
    }
    with pytest.raises(ConfigError, match=r"max_chunk_bytes \(262144\) .* at most 126976"):
        parse_config(raw)
    raw["federation"]["max_chunk_bytes"] = 126_976
    assert parse_config(raw).federation.max_chunk_bytes == 126_976
