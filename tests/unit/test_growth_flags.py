"""`burla coordinator`'s growth flags build its GrowthConfig; a bad one is one line naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from burla import daemon_cli, growth_cli
from burla.coordinator.config import GrowthConfig

BASE = ["coordinator", "--state-dir", "/tmp/unused", "--token", "t"]


def growth(*flags: str) -> GrowthConfig | None:
    return growth_cli.growth_config(daemon_cli.parser().parse_args([*BASE, *flags]))


def refused(capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    with pytest.raises(SystemExit) as exited:
        growth(*flags)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "see `burla coordinator --help`" in lines[0]
    return lines[0]


def test_without_a_provider_there_is_no_growth() -> None:
    assert growth() is None


def test_the_local_provider_with_caps_and_timeouts() -> None:
    config = growth("--provider", "local", "--local-node-cpus", "1", "--max-nodes", "3",
                    "--max-cpus", "8", "--min-nodes", "1", "--node-idle-timeout", "5",
                    "--boot-timeout", "30", "--cluster-name", "test-1",
                    "--local-node-command", "python -c 'pass'")
    assert config is not None and config.provider == "local"
    assert config.cluster_name == "test-1" and config.name_prefix == "burla-test-1"
    limits = config.limits
    assert (limits.max_nodes, limits.max_cpus, limits.max_gpus, limits.min_nodes) == (3, 8, None, 1)
    assert (limits.node_idle_timeout, limits.boot_timeout) == (5.0, 30.0)
    assert config.local is not None and config.local.cpus == 1
    assert config.local.command == ("python", "-c", "pass") and config.local.ram_gb >= 1


def test_the_gce_provider_reads_its_startup_script(tmp_path: Path) -> None:
    script = tmp_path / "startup.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    config = growth("--provider", "gce", "--gce-project", "p", "--gce-region", "us-central1",
                    "--gce-zones", "us-central1-b,us-central1-a", "--spot", "--spot-fallback",
                    "--gce-api-endpoint", "http://127.0.0.1:9", "--gce-startup-script",
                    str(script), "--advertise-endpoint", "tcp://10.0.0.2:7700")
    assert config is not None and config.gce is not None
    assert config.gce.zones == ("us-central1-b", "us-central1-a")
    assert config.gce.startup_script == "#!/bin/sh\necho hi\n"
    assert config.spot and config.spot_fallback
    assert config.advertise_endpoint == "tcp://10.0.0.2:7700"


@pytest.mark.parametrize(("flags", "says"), [
    (["--max-nodes", "3"], "--max-nodes needs --provider (gce or local)"),
    (["--provider", "aws"], "invalid choice: 'aws'"),
    (["--provider", "local", "--max-nodes", "-1"], "--max-nodes: expected a whole number >= 0, "
                                                   "got '-1'"),
    (["--provider", "local", "--max-cpus", "many"], "got 'many'"),
    (["--provider", "local", "--boot-timeout", "0"], "--boot-timeout: expected a number of "
                                                     "seconds > 0, got '0'"),
    (["--provider", "local", "--node-idle-timeout", "nan"], "got 'nan'"),
    (["--provider", "local", "--local-node-cpus", "0"], "expected a whole number >= 1, got '0'"),
    (["--provider", "local", "--cluster-name", "Big_Name"], "cluster name 'Big_Name' must be"),
    (["--provider", "local", "--spot-fallback"], "--spot-fallback needs --spot"),
    (["--provider", "local", "--min-nodes", "3", "--max-nodes", "2"],
     "--min-nodes=3 is more than --max-nodes=2"),
    (["--provider", "local", "--gce-project", "p"], "--gce-project is for --provider gce"),
    (["--provider", "gce", "--local-node-cpus", "2"], "--local-node-cpus is for --provider "
                                                      "local"),
    (["--provider", "gce", "--gce-project", "p"], "needs --gce-project and --gce-region"),
    (["--provider", "gce", "--gce-project", "p", "--gce-region", "central"],
     "GCE region 'central' is not a region name"),
    (["--provider", "gce", "--gce-project", "p", "--gce-region", "us-central1", "--gce-zones",
      "europe-west1-b"], "GCE zones europe-west1-b are not in region us-central1"),
    (["--provider", "gce", "--gce-project", "p", "--gce-region", "us-central1",
      "--gce-startup-script", "/no/such/script"], "cannot read --gce-startup-script "
                                                  "/no/such/script"),
    (["--provider", "local", "--advertise-endpoint", "10.0.0.2"], "'10.0.0.2' is not an "
                                                                 "endpoint"),
    (["--provider", "local", "--local-node-command", "python -c 'oops"], "--local-node-command"),
])
def test_a_bad_growth_flag_is_one_line_naming_it(capsys: pytest.CaptureFixture[str],
                                                 flags: list[str], says: str) -> None:
    assert says in refused(capsys, *flags)
