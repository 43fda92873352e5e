"""playbooks/gpu_host.yml converges on a real Ubuntu 22.04 root (debootstrap jammy), then changed=0.

Real here, as in test_host_roles.py: Ansible and the roles through the chroot connection,
apt/dpkg/apt-mark with pins and holds, GPG-signed apt repositories over HTTP, the hlctl wheel
in a venv, and Ubuntu's own packages: the root is jammy from archive.ubuntu.com and the
python3.11 packages the hlctl_agent role installs are Ubuntu's real .debs (downloaded once
with the cached root, served by the test as its archive mirror). Test doubles
(tests/fixtures/fake_apt_repo.py, in their Ubuntu layout by tests/fixtures/ubuntu_root.py):
NVIDIA's and Docker's repositories, dkms and the running kernel's headers, whose payloads
are scripts, because those servers are out of reach and no GPU or Docker engine runs here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.fixtures import fake_apt_repo as fake
from tests.fixtures import ubuntu_root
from tests.fixtures.debian_root import (
    REPO,
    DebianRoot,
    changed_tasks,
    run_playbook,
    skip_module_unless_root_with,
)

pytestmark = pytest.mark.slow

skip_module_unless_root_with("debootstrap", "dpkg-deb", "apt-ftparchive", "gpg",
                             why="debootstrap, chroot, mount")

# The Debian test's lab config and session wheelhouse (cp311 wheels: the root's venv runs
# Ubuntu's python3.11, the same minor version as this venv).
# wheelhouse is a fixture: imported for pytest to find.
from tests.integration.test_host_roles import (  # noqa: E402
    LAB_CONFIG,
    _host_vars,
    wheelhouse,  # noqa: F401
)


@pytest.fixture(scope="module")
def jammy() -> tuple[Path, Path]:
    """The cached jammy root and its pool of Ubuntu .debs (built on first use)."""
    try:
        return ubuntu_root.cached_root()
    except ubuntu_root.UbuntuRootUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory,
          jammy: tuple[Path, Path]) -> Iterator[tuple[fake.FakeRepos, str]]:
    built = ubuntu_root.build_ubuntu_repos(tmp_path_factory.mktemp("apt-ubuntu"), jammy[1])
    with fake.serve(built.root) as url:
        yield built, url


@pytest.fixture
def root(tmp_path: Path, repos: tuple[fake.FakeRepos, str]) -> Iterator[DebianRoot]:
    built, url = repos
    with ubuntu_root.ubuntu_copy(tmp_path) as (copy, _pool):
        ubuntu_root.use_ubuntu_repos(copy, url,
                                     (built.root / "ubuntu-archive-keyring.gpg").read_bytes())
        yield copy


def test_gpu_host_playbook_converges_on_ubuntu_2204_then_changes_nothing(
        tmp_path: Path, root: DebianRoot, repos: tuple[fake.FakeRepos, str],
        wheelhouse: tuple[Path, Path],  # noqa: F811  (the fixture imported above)
        monkeypatch: pytest.MonkeyPatch) -> None:
    """All six roles of gpu_host.yml on jammy through the chroot connection; again: no change."""
    url = repos[1]
    root.mount_for_chroot()
    root.mount("-t", "tmpfs", "-o", "size=16m", "models", at="/srv/models")
    root.run("useradd", "--create-home", "admin")
    inventory = root.chroot_inventory(tmp_path)
    playbook = REPO / "playbooks" / "gpu_host.yml"
    extra = _host_vars(url, wheelhouse)
    # -v: the verify steps' answers (nvidia-smi, docker run --gpus) show in the output.
    monkeypatch.setenv("ANSIBLE_VERBOSITY", "1")

    first = run_playbook(playbook, inventory, extra, timeout=900)
    assert first.failed == 0 and first.unreachable == 0 and first.returncode == 0, \
        first.output[-8000:]
    assert first.changed > 10
    second = run_playbook(playbook, inventory, extra, timeout=900)
    assert second.failed == 0 and second.returncode == 0, second.output[-8000:]
    assert second.changed == 0, f"changed on the second run: {changed_tasks(second.output)}"
    print(f"gpu_host.yml on jammy: first run {first.seconds:.0f}s (changed={first.changed}), "
          f"second run {second.seconds:.0f}s (changed=0)")

    # NVIDIA's Ubuntu 22.04 repository, not Debian's: only ubuntu2204 is served here, so the
    # cuda-keyring download itself fails on a wrong distro directory.
    cuda_url = f"{url}/cuda/ubuntu2204/x86_64/"
    sources = root.path / "etc/apt/sources.list.d"
    assert (sources / "cuda-ubuntu2204-x86_64.list").read_text() == (
        f"deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] {cuda_url} /\n")
    assert not list(sources.glob("cuda-debian*")) and not (sources / "debian-contrib.list").exists()
    assert f"{url}/docker/linux/ubuntu jammy stable" in " ".join(
        (sources / "docker.list").read_text().split())

    # The pin beat the newer branch that cuda-drivers-530's ">=" dependency allows.
    versions = dict(line.split() for line in root.run(
        "dpkg-query", "-W", "-f", "${Package} ${Version}\n").stdout.splitlines())
    assert versions["nvidia-driver"] == f"{fake.DRIVER_OLD}-1"
    assert versions["cuda-drivers-530"] == f"{fake.DRIVER_OLD}-1"
    assert "cuda-12-1" not in versions and "cuda-drivers" not in versions
    held = set(root.run("apt-mark", "showhold").stdout.split())
    assert {"cuda-drivers-530", "nvidia-driver", "nvidia-kernel-dkms", "nvidia-smi",
            "libcuda1"} <= held
    assert "nvidia-container-toolkit" not in held
    assert f"linux-headers-{os.uname().release}" in versions
    assert "blacklist nouveau" in (root.path / "etc/modprobe.d/blacklist-nouveau.conf").read_text()
    assert "The NVIDIA module changed: reboot" in first.output
    assert "CUDA 12.1" in first.output  # nvidia-smi's answer, as the verify step read it

    # Docker: log rotation and the nvidia runtime side by side in daemon.json.
    daemon = json.loads((root.path / "etc/docker/daemon.json").read_text())
    assert daemon["log-driver"] == "json-file"
    assert daemon["log-opts"] == {"max-size": "10m", "max-file": "3"}
    assert daemon["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert "docker" in root.run("id", "-nG", "admin").stdout.split()
    assert (root.path / "etc/systemd/system/multi-user.target.wants/docker.service").is_symlink()
    assert "GPU 0: NVIDIA GeForce RTX 3090" in first.output  # docker run --gpus all

    # The agent: jammy's python3 is 3.10, so the venv runs Ubuntu's python3.11.
    assert versions["python3.11-venv"].startswith("3.11")
    venv_python = root.run("/opt/hlctl/bin/python", "-c",
                           "import sys; print('%d.%d' % sys.version_info[:2])").stdout.strip()
    assert venv_python == "3.11"
    config = yaml.safe_load((root.path / "etc/hlctl/hlctl.yaml").read_text())
    assert config["models_dir"] == "/srv/models" and config["state_dir"] == "/var/lib/hlctl"
    assert config["health"] == LAB_CONFIG["health"]
    assert "proxmox" not in config and "vms" not in config
    check = root.run("/usr/local/bin/hlctl", "--config", "/etc/hlctl/hlctl.yaml",
                     "config", "check")
    assert "ok" in check.stdout
    assert (root.path / "var/lib/hlctl").is_dir()

    # The health check: units installed, the timer enabled, the secret file 0600.
    assert (root.path / "etc/systemd/system/timers.target.wants/hlctl-health.timer").is_symlink()
    unit = (root.path / "etc/systemd/system/hlctl-health.service").read_text()
    assert ("ExecStart=/opt/hlctl/bin/hlctl health --notify --prometheus "
            "/var/lib/prometheus/node-exporter/hlctl.prom") in unit
    assert (root.path / "etc/hlctl/secrets/ntfy").stat().st_mode & 0o777 == 0o600
    assert "tk_not_a_real_token" not in first.output + second.output
