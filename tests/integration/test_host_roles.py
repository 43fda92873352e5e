"""The host roles run for real against a Debian 12 root (debootstrap), then again: changed=0.

Real here: Ansible and the roles, apt/dpkg/apt-mark with pins and holds, GPG-signed apt
repositories over HTTP, mkfs/blkid/mount on a loop device, Python venvs with the hlctl wheel,
systemd (booted with systemd-nspawn in the test's own network namespaces) reached over SSH.
Test doubles (tests/fixtures/fake_apt_repo.py): NVIDIA's and Docker's repositories hold
packages with the real names whose payloads are scripts (nvidia-smi, nvidia-ctk, docker),
because those servers are out of reach and no GPU or Docker engine runs here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.fixtures import fake_apt_repo as fake
from tests.fixtures.debian_root import (
    DebianRoot,
    NspawnHost,
    Recap,
    changed_tasks,
    missing_tools,
    nspawn_boot_problem,
    run_playbook,
    skip_module_unless_root_with,
)
from tests.fixtures.fleet_hosts import build_wheelhouse

pytestmark = pytest.mark.slow

skip_module_unless_root_with("debootstrap", "dpkg-deb", "apt-ftparchive", "gpg",
                             why="debootstrap, chroot, mount, losetup")

LAB_CONFIG = {
    "health": {"temperature": {"crit_c": 88, "warn_c": 80}},
    "alerts": {"webhooks": [{"name": "phone", "url": "https://ntfy.example.org/lab",
                             "kind": "ntfy", "token": {"file": "/etc/hlctl/secrets/ntfy"}}]},
    # Controller-only sections: left out on hosts.
    "proxmox": {"endpoint": "https://pve01:8006", "token_id": "hlctl@pve!lab",
                "token_secret": {"env": "PVE_TOKEN"}},
    "vms": {"gpu01": {"gpu_pci": "0000:01:00.0"}},
}


@pytest.fixture(scope="session")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[fake.FakeRepos, str]]:
    built = fake.build_repos(tmp_path_factory.mktemp("apt"))
    with fake.serve(built.root) as url:
        yield built, url


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The hlctl wheel (built now) and a tar of its dependencies' wheels (cached by pyproject)."""
    return build_wheelhouse(tmp_path_factory.mktemp("dist"))


@pytest.fixture
def root(tmp_path: Path, repos: tuple[fake.FakeRepos, str]) -> Iterator[DebianRoot]:
    built, url = repos
    with DebianRoot.copy(tmp_path) as debian:
        debian.use_repos(url, (built.root / "debian-archive-keyring.gpg").read_bytes())
        yield debian


def _play(tmp_path: Path, roles: list[str], name: str = "play.yml") -> Path:
    playbook = tmp_path / name
    playbook.write_text(yaml.safe_dump([{"name": "Apply roles", "hosts": "gpu_hosts",
                                         "roles": roles}], sort_keys=False))
    return playbook


def _assert_ok(recap: Recap) -> None:
    assert recap.failed == 0 and recap.unreachable == 0 and recap.returncode == 0, \
        recap.output[-8000:]


def _assert_idempotent(recap: Recap) -> None:
    _assert_ok(recap)
    assert recap.changed == 0, f"changed on the second run: {changed_tasks(recap.output)}"


def _host_vars(url: str, wheelhouse: tuple[Path, Path]) -> dict[str, object]:
    wheel, house = wheelhouse
    return {
        **fake.FakeRepos.urls(url),
        # A chroot cannot reboot; the role reports the reboot that is due instead.
        "nvidia_driver_reboot": False,
        "hlctl_agent_package_file": str(wheel),
        "hlctl_agent_wheelhouse": str(house),
        "hlctl_lab_config": LAB_CONFIG,
        "hlctl_admin_user": "admin",
        "gpu_healthcheck_alert_secret_files": [{"path": "/etc/hlctl/secrets/ntfy",
                                                "content": "tk_not_a_real_token"}],
    }


def _provision(tmp_path: Path, inventory: Path, *args: str,
               verbose: bool = False) -> subprocess.CompletedProcess[str]:
    """`hlctl provision --only host` as a user runs it: the console script, a lab config file,
    an inventory; hlctl finds playbooks/ and roles/ in this checkout and runs gpu_host.yml."""
    config = tmp_path / "hlctl.yaml"
    # The controller's own state dir (the hosts get theirs from the hlctl_agent role).
    config.write_text(yaml.safe_dump({**LAB_CONFIG,
                                      "state_dir": str(tmp_path / "controller-state")}))
    bindir = Path(sys.executable).parent
    # No --wheel: hlctl builds the agent's wheel from this checkout (into its state dir).
    env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}",
           "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_PIPELINING": "True"}
    env.pop("HLCTL_WHEEL", None)
    return subprocess.run([str(bindir / "hlctl"), "--config", str(config),
                           *(["-v"] if verbose else []),
                           "provision", "--only", "host", "-i", str(inventory), *args],
                          cwd=tmp_path, env=env, text=True, capture_output=True, timeout=900)


def _summary(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    assert result.returncode == 0, (result.stdout + result.stderr)[-8000:]
    data = json.loads(result.stdout)
    assert data["ok"] and [r["playbook"] for r in data["runs"]] == ["gpu_host.yml"]
    return data["runs"][0]["hosts"]["gpu01"]


def test_gpu_host_playbook_converges_then_changes_nothing(
        tmp_path: Path, root: DebianRoot, repos: tuple[fake.FakeRepos, str],
        wheelhouse: tuple[Path, Path]) -> None:
    """`hlctl provision --only host`: playbooks/gpu_host.yml, all six roles in order, through
    the chroot connection, with the hlctl wheel that hlctl builds from this checkout."""
    root.mount_for_chroot()
    # An existing mount at the models directory is used as it is.
    root.mount("-t", "tmpfs", "-o", "size=16m", "models", at="/srv/models")
    root.run("useradd", "--create-home", "admin")
    inventory = root.chroot_inventory(tmp_path)
    # What a lab sets per host goes in the inventory; the lab config comes from hlctl.yaml.
    extra = {k: v for k, v in _host_vars(repos[1], wheelhouse).items()
             if k != "hlctl_lab_config"}
    data = yaml.safe_load(inventory.read_text())
    data["all"]["children"]["gpu_hosts"]["hosts"]["gpu01"].update(extra)
    inventory.write_text(yaml.safe_dump(data))

    # First run with -v: Ansible's own output, then hlctl's summary table.
    started = time.monotonic()
    first = _provision(tmp_path, inventory, verbose=True)
    first_s = time.monotonic() - started
    output = first.stdout + first.stderr
    assert first.returncode == 0, output[-8000:]
    # hlctl's summary table closes the output (Ansible's own recap line comes before it).
    row = [line.split() for line in first.stdout.splitlines()
           if line.strip().startswith("gpu01 ")][-1]
    assert row[3] == "0" and row[4] == "0" and int(row[2]) > 10, row  # failed, unreach, changed
    assert list((tmp_path / "controller-state" / "build" / "wheel").glob("hlctl-*.whl"))
    second = _summary(_provision(tmp_path, inventory, "--json"))
    assert second["changed"] == 0 and second["failed"] == 0, second
    # A dry run on the converged host: nothing to change, and nothing fails.
    dry = _summary(_provision(tmp_path, inventory, "--check", "--json"))
    assert dry["changed"] == 0 and dry["failed"] == 0, dry
    print(f"hlctl provision --only host: first run {first_s:.0f}s (changed={row[2]}), "
          f"second run {second['seconds']:.0f}s (changed=0), --check {dry['seconds']:.0f}s")
    first_output = output

    # The pin beat the newer branch that cuda-drivers-530's ">=" dependency allows.
    versions = dict(line.split() for line in root.run(
        "dpkg-query", "-W", "-f", "${Package} ${Version}\n").stdout.splitlines())
    assert versions["nvidia-driver"] == f"{fake.DRIVER_OLD}-1"
    assert versions["cuda-drivers-530"] == f"{fake.DRIVER_OLD}-1"
    assert "cuda-12-1" not in versions and "cuda-drivers" not in versions
    held = root.run("apt-mark", "showhold").stdout.split()
    assert {"cuda-drivers-530", "nvidia-driver", "nvidia-kernel-dkms", "nvidia-smi",
            "libcuda1"} <= set(held)
    assert "nvidia-container-toolkit" not in held
    assert f"linux-headers-{os.uname().release}" in versions
    assert "blacklist nouveau" in (root.path / "etc/modprobe.d/blacklist-nouveau.conf").read_text()
    assert "The NVIDIA module changed: reboot" in first_output
    assert "CUDA 12.1" in first_output  # nvidia-smi's answer, as the verify step read it

    # Docker: log rotation and the nvidia runtime live side by side in daemon.json.
    daemon = json.loads((root.path / "etc/docker/daemon.json").read_text())
    assert daemon["log-driver"] == "json-file"
    assert daemon["log-opts"] == {"max-size": "10m", "max-file": "3"}
    assert daemon["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert "docker" in root.run("id", "-nG", "admin").stdout.split()
    # The links are absolute, meaningful inside the root only: check the link, not its target.
    assert (root.path / "etc/systemd/system/multi-user.target.wants/docker.service").is_symlink()
    assert "GPU 0: NVIDIA GeForce RTX 3090" in first_output  # docker run --gpus all

    # The agent: venv, host config (controller-only sections left out), state dir.
    config = yaml.safe_load((root.path / "etc/hlctl/hlctl.yaml").read_text())
    assert config["models_dir"] == "/srv/models" and config["state_dir"] == "/var/lib/hlctl"
    assert config["health"]["temperature"]["crit_c"] == 88
    assert "proxmox" not in config and "vms" not in config
    assert config["alerts"]["webhooks"][0]["token"] == {"file": "/etc/hlctl/secrets/ntfy"}
    check = root.run("/usr/local/bin/hlctl", "--config", "/etc/hlctl/hlctl.yaml",
                     "config", "check")
    assert "ok" in check.stdout
    assert (root.path / "var/lib/hlctl").is_dir()

    # The health check: units installed and the timer enabled; the secret file is 0600.
    wants = root.path / "etc/systemd/system/timers.target.wants/hlctl-health.timer"
    assert wants.is_symlink()
    unit = (root.path / "etc/systemd/system/hlctl-health.service").read_text()
    assert ("ExecStart=/opt/hlctl/bin/hlctl health --notify --prometheus "
            "/var/lib/prometheus/node-exporter/hlctl.prom") in unit
    secret = root.path / "etc/hlctl/secrets/ntfy"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert "tk_not_a_real_token" not in first_output


def test_nvidia_driver_rejects_a_driver_without_cuda_12_1(
        tmp_path: Path, root: DebianRoot, repos: tuple[fake.FakeRepos, str]) -> None:
    """The verify step fails on what nvidia-smi reports; a pre-530 branch is refused early."""
    root.mount_for_chroot()
    inventory = root.chroot_inventory(tmp_path)
    play = _play(tmp_path, ["nvidia_driver"])
    base = {**fake.FakeRepos.urls(repos[1]), "nvidia_driver_reboot": False}

    old = run_playbook(play, inventory, {**base, "nvidia_driver_branch": "525",
                                         "nvidia_driver_version": "525.147.05"})
    assert old.failed == 1
    assert "CUDA 12.1 needs branch 530 or newer" in old.output
    assert not (root.path / "etc/apt/preferences.d/nvidia-driver-pin").exists()

    strict = run_playbook(play, inventory, {**base, "nvidia_driver_min_cuda_version": "12.2"})
    assert strict.failed == 1
    assert (f"nvidia-smi reports driver {fake.DRIVER_OLD} with CUDA 12.1; CUDA 12.2 or newer "
            "is needed") in " ".join(strict.output.split())


def _loop_device(tmp_path: Path, size_mb: int = 64) -> str:
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    return subprocess.run(["losetup", "--find", "--show", str(image)], check=True, text=True,
                          capture_output=True).stdout.strip()


@contextmanager
def udev_stand_in(root: DebianRoot, device: str) -> Iterator[None]:
    """Keep /dev/disk/by-uuid/<uuid> -> the device current in the root's /dev, as udev does.

    No udev runs here and loop devices do not show in /proc/partitions, so without the link
    mount(8) cannot resolve UUID= (on a real host udev makes it when mkfs writes the
    filesystem).
    """
    links = root.path / "dev/disk/by-uuid"
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.2):
            uuid = subprocess.run(["blkid", "-p", "-o", "value", "-s", "UUID", device],
                                  text=True, capture_output=True).stdout.strip()
            if uuid and not (links / uuid).is_symlink():
                for old in links.iterdir():
                    old.unlink()
                (links / uuid).symlink_to(f"../../{Path(device).name}")

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[str]:
    if not Path("/dev/loop-control").exists():
        pytest.skip("no loop devices here (/dev/loop-control missing)")
    device = _loop_device(tmp_path)
    yield device
    subprocess.run(["losetup", "-d", device], check=False)


def test_model_storage_formats_a_blank_disk_and_never_erases_another_filesystem(
        tmp_path: Path, root: DebianRoot, loop: str) -> None:
    """A blank device is formatted and mounted by UUID; a foreign filesystem is refused."""
    root.mount_for_chroot(Path(loop).name)
    inventory = root.chroot_inventory(tmp_path)
    play = _play(tmp_path, ["model_storage"])
    subprocess.run(["mkfs.ext2", "-q", "-L", "precious", loop], check=True)
    disk = {"model_storage_device": loop, "model_storage_partition": False}
    try:
        with udev_stand_in(root, loop):
            refused = run_playbook(play, inventory, disk)
            assert refused.failed == 1
            message = f"{loop} holds a ext2 filesystem (wanted ext4)"
            assert message in " ".join(refused.output.split())
            probe = subprocess.run(["blkid", "-p", "-o", "value", "-s", "LABEL", loop], text=True,
                                   capture_output=True).stdout.strip()
            assert probe == "precious"  # untouched

            forced = run_playbook(play, inventory, {**disk, "model_storage_force_format": True})
            _assert_ok(forced)
            again = run_playbook(play, inventory, {**disk, "model_storage_force_format": True})
            _assert_idempotent(again)  # an ext4 of ours is kept, even with force
            uuid = subprocess.run(["blkid", "-p", "-o", "value", "-s", "UUID", loop], text=True,
                                  capture_output=True, check=True).stdout.strip()
            fstab = (root.path / "etc/fstab").read_text()
            assert f"UUID={uuid} /srv/models ext4 defaults,noatime 0 0" in fstab
            assert root.run("mountpoint", "-q", "/srv/models", check=False).returncode == 0
    finally:
        subprocess.run(["umount", "-l", str(root.path / "srv/models")], check=False,
                       capture_output=True)


def test_health_timer_runs_under_systemd_over_ssh(
        tmp_path: Path, root: DebianRoot, wheelhouse: tuple[Path, Path]) -> None:
    """Boot the root (systemd as PID 1), configure it over SSH; the timer starts the check."""
    missing = missing_tools("systemd-nspawn", "ip", "ssh", "ssh-keygen")
    if missing:
        pytest.skip(f"needs the apt packages {', '.join(missing)}")
    problem = nspawn_boot_problem()
    if problem:
        pytest.skip(f"systemd-nspawn cannot boot a root on this machine: {problem}")
    wheel, house = wheelhouse
    host = NspawnHost(root, tmp_path, index=0)
    try:
        host.boot()
        inventory = host.inventory()
        play = _play(tmp_path, ["hlctl_agent", "gpu_healthcheck"])
        extra = {"hlctl_agent_package_file": str(wheel), "hlctl_agent_wheelhouse": str(house),
                 "hlctl_agent_lab_config": LAB_CONFIG, "gpu_healthcheck_randomized_delay_s": 0}
        first = run_playbook(play, inventory, extra, netns=host.ctl_ns)
        _assert_ok(first)
        second = run_playbook(play, inventory, extra, netns=host.ctl_ns)
        _assert_idempotent(second)
        state = host.ssh("systemctl show hlctl-health.timer -p ActiveState -p UnitFileState"
                         ).stdout.split()
        assert "ActiveState=active" in state and "UnitFileState=enabled" in state
        # OnCalendar=minutely: within about a minute the timer starts the service. Without
        # a GPU the check reports UNKNOWN (exit 3), which is what a host without a driver is.
        deadline = time.monotonic() + 75
        shown = ""
        while time.monotonic() < deadline:
            shown = host.ssh("systemctl show hlctl-health.service -p ExecMainStatus "
                             "-p ExecMainExitTimestampMonotonic").stdout
            if "ExecMainExitTimestampMonotonic=0" not in shown:
                break
            time.sleep(3)
        assert "ExecMainExitTimestampMonotonic=0" not in shown, "the timer never fired"
        assert "ExecMainStatus=3" in shown
        journal = host.ssh("journalctl -u hlctl-health.service --no-pager -o cat").stdout
        assert "GPU UNKNOWN" in journal
        # systemd's StateDirectory= keeps the role's mode, so a re-run after the timer fired
        # stays changed=0.
        assert host.ssh("stat -c %a /var/lib/hlctl").stdout.strip() == "750"
        third = run_playbook(play, inventory, extra, netns=host.ctl_ns)
        _assert_idempotent(third)
    finally:
        host.shutdown()
