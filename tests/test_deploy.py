"""The shipped systemd unit and deploy guide say what ahv does: reload on SIGHUP, drain on
SIGTERM within the stop timeout, and leave the GPU devices visible."""

from __future__ import annotations

import configparser
from pathlib import Path

from ahv.config import ServerConfig, WebhookConfig

ROOT = Path(__file__).resolve().parent.parent


def test_systemd_unit() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "deploy" / "ahv.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    assert service["Restart"] == "on-failure"
    assert "serve --config" in service["ExecStart"]
    # Past the default drain (running jobs' grace, then webhook flush), with room to spare.
    drain_s = ServerConfig().shutdown_grace_s + WebhookConfig().flush_on_shutdown_s
    assert int(service["TimeoutStopSec"]) > drain_s
    for hides_the_gpu in ("PrivateDevices", "DevicePolicy", "ProtectClock", "DeviceAllow"):
        assert hides_the_gpu not in service
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_deploy_guide_covers_the_operations() -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for topic in (
        "scripts/gpu_check.py",
        "[gpu]",
        "deploy/ahv.service",
        "systemctl reload ahv",
        "proxy_buffering off",
        "flush_interval -1",
        "text/event-stream",
        "client_max_body_size",
        "proxy_read_timeout",
        "ahv backup",
        "ahv-backup.timer",
        "--log-format json",
    ):
        assert topic in guide, topic
