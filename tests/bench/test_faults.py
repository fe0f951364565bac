"""The fault bench's CI-sized subset: the code of ``python -m bench faults`` with small
counts, on the same real parts (the shipped broker config, serverd with a real Triton,
edged's offload client and outbox, the real video), asserting the same invariants."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import _faults_broker as broker_module
from bench._faults_broker import (
    ShippedBroker,
    anonymous_refused,
    foreign_publish_refused,
    takeover_refused,
)
from bench.faults import run

# broker restart, a locked outbox and Triton killed under load run elsewhere in the suite
# (tests/test_end_to_end.py, tests/edged/offload/test_outbox.py, tests/serverd/
# test_service.py); the long run has every fault
CI_FAULTS = [
    "partition",
    "serverd_kill9",
    "clock_jump",
    "outbox_full",
    "corrupt_sqlite",
    "camera_loss",
]


@pytest.mark.slow
def test_faults_and_fuzz_lose_nothing_duplicate_nothing_and_crash_nothing(
    tmp_path: Path,
) -> None:
    out = run(tmp_path, CI_FAULTS, fuzz_cases=600, rate_hz=10.0, settle_s=0.5)
    assert out["anonymous_refused"] is True
    assert out["foreign_publish_refused"] is True
    assert out["takeover_refused"] is True
    assert (out["jobs_lost"], out["jobs_duplicated"], out["crashes"]) == (0, 0, 0), out
    assert out["faults_tried"] == len(CI_FAULTS)
    assert out["faults_survived"] == len(CI_FAULTS), out["faults"]
    assert out["fuzz_cases"] >= 600
    faults = out["faults"]
    for name in ("partition", "serverd_kill9", "clock_jump"):  # traffic went through
        assert faults[name]["jobs"] > 0 and faults[name]["exit"] == faults[name]["jobs"], name
    full = faults["outbox_full"]  # past its bound: shed (told Failed) or refused, none lost
    assert full["failed"] + full["refused"] > 0 and full["lost"] == 0
    assert faults["camera_loss"]["camera_errors"] == 2


def test_the_refusal_probes_see_a_broker_that_lets_them_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same probes against the shipped config loosened (no certificate needed, the
    client ids as asked, an open ACL) answer false: the checks can fail."""
    acl = tmp_path / "open.acl"
    acl.write_text(
        "".join(f"{k} readwrite {t}\n" for k in ("topic", "pattern") for t in ("#", "$hw/#"))
    )
    conf = tmp_path / "open.conf"
    shipped = broker_module.SHIPPED_CONF.read_text()
    for strict, loose in (
        ("require_certificate true", "require_certificate false"),
        ("use_identity_as_username true", "use_identity_as_username false"),
        ("use_username_as_clientid true", "use_username_as_clientid false"),  # no name
        ("allow_anonymous false", "allow_anonymous true"),
    ):
        shipped = shipped.replace(strict, loose)
    conf.write_text(shipped)
    monkeypatch.setattr(broker_module, "SHIPPED_ACL", acl)
    monkeypatch.setattr(broker_module, "SHIPPED_CONF", conf)
    broker = ShippedBroker(tmp_path / "broker")
    broker.start()
    try:
        assert anonymous_refused(broker) is False
        assert foreign_publish_refused(broker) is False
        assert takeover_refused(broker) is False
    finally:
        broker.stop()
