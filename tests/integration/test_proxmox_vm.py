"""The real proxmox_vm role and `hlctl provision --only vm` against a Proxmox API simulator.

No Proxmox host runs here, so tests/fixtures/proxmox_sim.py stands in at the wire: real HTTPS,
token auth, Proxmox's envelopes, UPID tasks and refusals (see its docstring for what it does
not model). Ansible, community.proxmox, proxmoxer and the role are the real ones.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from hlctl.cli.main import LAZY_COMMANDS, cli
from hlctl.provision.proxmox_api import ProxmoxApiError, ProxmoxClient
from hlctl.provision.runner import PlaybookRun, build_command, private_files, run_playbook
from hlctl.provision.settings import parse_provision_config
from tests.fixtures.proxmox_sim import ProxmoxSim, Vm, proxmox_sim

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = Path(sys.executable).parent / "ansible-playbook"
needs_ansible = pytest.mark.skipif(
    not ANSIBLE.exists() or importlib.util.find_spec("proxmoxer") is None,
    reason="needs ansible-playbook and proxmoxer in this venv (hlctl[provision] + proxmoxer)")

Invoke = Callable[..., Result]


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pve-cert")


@pytest.fixture
def pve(cert_dir: Path) -> Iterator[tuple[ProxmoxSim, int]]:
    with proxmox_sim(cert_dir, ProxmoxSim(task_seconds=0.3)) as served:
        yield served


def _lab_yaml(port: int, token_id: str, cores: int = 8) -> str:
    return f"""\
proxmox:
  endpoint: https://127.0.0.1:{port}
  node: pve
  token_id: "{token_id}"
  token_secret: {{env: PVE_TEST_SECRET}}
  verify_tls: false        # the simulator's certificate is self-signed
  task_timeout_s: 20
vms:
  gpu01:
    cores: {cores}
    memory_mb: 16384
    disk_gb: 48
    gpu_pci: "0000:01:00"
    ip: 192.0.2.21/24
    gateway: 192.0.2.1
    ssh_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHlab me@desk"]
    wait_for_ssh: false    # nothing boots in the simulator
"""


@pytest.fixture
def lab(tmp_path: Path, pve: tuple[ProxmoxSim, int],
        monkeypatch: pytest.MonkeyPatch) -> tuple[ProxmoxSim, Path, Invoke]:
    sim, port = pve
    config = tmp_path / "hlctl.yaml"
    config.write_text(_lab_yaml(port, sim.token_id))
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  children:\n    gpu_hosts:\n      hosts:\n        gpu01:\n"
                         "          ansible_host: 192.0.2.21\n")
    monkeypatch.setenv("PVE_TEST_SECRET", sim.token_secret)
    monkeypatch.setenv("HLCTL_INVENTORY", str(inventory))
    monkeypatch.setenv("HLCTL_ANSIBLE_DIR", str(REPO))
    # Until the lead registers them in cli/main.py.
    monkeypatch.setitem(LAZY_COMMANDS, "provision",
                        ("hlctl.cli.provision:provision", "Provision VMs and hosts."))
    monkeypatch.setitem(LAZY_COMMANDS, "vm", ("hlctl.cli.vm:vm", "Proxmox VMs."))

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, ["--config", str(config), *args])
    return sim, config, invoke


def _summary(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True
    return data["runs"][0]["hosts"]["gpu01"]


def _writes(sim: ProxmoxSim, since: int = 0) -> list[Any]:
    return [c for c in sim.calls[since:] if c.method != "GET"]


@needs_ansible
@pytest.mark.slow
def test_first_run_creates_the_vm_second_changes_nothing_third_applies_a_change(
        lab: tuple[ProxmoxSim, Path, Invoke]) -> None:
    sim, config, invoke = lab
    first = _summary(invoke("provision", "--only", "vm", "--json"))
    assert first["changed"] == 5  # mapping, clone, settings, resize, start
    assert first["failed"] == 0

    mapping = sim.calls_to("POST", r"^/cluster/mapping/pci$")
    assert [c.params["id"] for c in mapping] == ["gpu01-gpu"]
    assert mapping[0].params["map"] == ["node=pve,path=0000:01:00,id=10de:2204,iommugroup=12"]
    clone = sim.calls_to("POST", r"^/nodes/pve/qemu/9000/clone$")
    assert len(clone) == 1 and clone[0].params["newid"] == "100"
    assert clone[0].params["name"] == "gpu01" and clone[0].params["full"] == "1"
    (settings,) = sim.calls_to("PUT", r"^/nodes/pve/qemu/100/config$")
    sent = settings.params
    assert sent["hostpci0"] == "mapping=gpu01-gpu,pcie=1"
    assert sent["machine"] == "q35"
    assert sent["bios"] == "ovmf"
    assert sent["efidisk0"] == "local-lvm:1,efitype=4m,pre-enrolled-keys=0"
    assert sent["cpu"] == "host"
    assert sent["balloon"] == 0
    assert sent["cores"] == 8 and sent["memory"] == 16384
    assert sent["ipconfig0"] == "ip=192.0.2.21/24,gw=192.0.2.1"
    assert sent["ciuser"] == "hlctl"
    assert sent["sshkeys"].startswith("ssh-ed25519%20AAAA")
    assert "net0" not in sent  # the template's NIC is already virtio on vmbr0
    (resize,) = sim.calls_to("PUT", r"/qemu/100/resize$")
    assert resize.params == {"disk": "scsi0", "size": "48G"}
    assert len(sim.calls_to("POST", r"/qemu/100/status/start$")) == 1
    # Every call came with the API token; none needed root.
    assert {c.user for c in sim.calls} == {sim.token_id}
    vm = sim.vms[100]
    assert vm.status == "running"
    assert vm.config["efidisk0"].startswith("local-lvm:vm-100-disk-1,")
    assert "size=48G" in vm.config["scsi0"]

    before = len(sim.calls)
    second = _summary(invoke("provision", "--only", "vm", "--json"))
    assert second["changed"] == 0
    assert _writes(sim, before) == []

    config.write_text(config.read_text().replace("cores: 8", "cores: 12"))
    before = len(sim.calls)
    third = _summary(invoke("provision", "--only", "vm", "--json"))
    assert third["changed"] == 2  # the setting, and the restart it needs
    writes = [(c.method, c.path, c.params) for c in _writes(sim, before)]
    assert writes[0] == ("PUT", "/nodes/pve/qemu/100/config", {"cores": 12})
    assert writes[1][:2] == ("POST", "/nodes/pve/qemu/100/status/reboot")
    assert sim.vms[100].config["cores"] == "12" and not sim.vms[100].pending


@needs_ansible
@pytest.mark.slow
def test_check_mode_reports_what_would_change_and_writes_nothing(
        lab: tuple[ProxmoxSim, Path, Invoke]) -> None:
    sim, _, invoke = lab
    summary = _summary(invoke("provision", "--only", "vm", "--check", "--json"))
    assert summary["changed"] >= 3  # would create the mapping, clone, start
    assert _writes(sim) == []
    assert 100 not in sim.vms


@needs_ansible
@pytest.mark.slow
def test_progress_is_one_line_per_task_and_a_summary(
        lab: tuple[ProxmoxSim, Path, Invoke]) -> None:
    sim, _, invoke = lab
    sim.add_vm(Vm(vmid=100, node="pve", name="gpu01", status="running", config={
        "name": "gpu01", "hostpci0": "mapping=gpu01-gpu,pcie=1"}))
    sim.mappings["gpu01-gpu"] = {"id": "gpu01-gpu", "map": ["node=pve,path=0000:01:00"]}
    sim.fail_next[r"^PUT /nodes/pve/qemu/100/config$"] = (500, "VM is locked (backup)")
    result = invoke("provision", "--only", "vm")
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert any(ln.split()[:2] == ["ok", "gpu01"] and "Preflight | List the nodes" in ln
               for ln in lines)
    assert not any("TASK [" in ln for ln in lines)  # not Ansible's raw output
    assert any(ln.split() == ["host", "ok", "changed", "failed", "unreach", "skipped", "time"]
               for ln in lines)
    row = next(ln.split() for ln in lines if ln.split()[:1] == ["gpu01"])
    assert row[2:5] == ["0", "1", "0"]  # changed, failed, unreachable
    failed = [ln for ln in lines if ln.strip().startswith("FAILED gpu01:")]
    assert len(failed) == 1
    assert "Hardware | Check that Proxmox took the settings" in failed[0]
    assert "VM is locked (backup)" in failed[0]


@pytest.mark.parametrize(("break_it", "fragment"), [
    (lambda sim: sim.nodes["pve"]["pci"].__setitem__(
        slice(None), [{**d, "iommugroup": -1} for d in sim.nodes["pve"]["pci"]]),
     "IOMMU is off on node pve: enable IOMMU on the host: add intel_iommu=on"),
    (lambda sim: sim.nodes["pve"]["pci"].__setitem__(slice(3, None), []),
     "GPU 0000:01:00 is not on node pve"),
    (lambda sim: sim.nodes["pve"]["pci"].append({
        "id": "0000:02:00.0", "iommugroup": 12, "class": "0x010802"}),
     "shares IOMMU group 12 with 0000:02:00.0"),
    (lambda sim: sim.add_vm(Vm(vmid=105, node="pve", name="old-gpu",
                               config={"hostpci0": "0000:01:00.0,pcie=1"})),
     "GPU 0000:01:00 is already assigned to old-gpu (105, hostpci0)"),
    (lambda sim: sim.vms.pop(9000), "template 'debian-12-cloudinit' not found"),
    (lambda sim: sim.vms[9000].config.pop("ide2"), "has no cloud-init drive"),
    (lambda sim: sim.nodes["pve"]["storage"]["local-lvm"].__setitem__("used", 490 * 2**30),
     "storage 'local-lvm' has 10.0 GiB free, the disk needs 48 GiB"),
])
def test_each_preflight_failure_is_one_line_and_nothing_is_changed(
        lab: tuple[ProxmoxSim, Path, Invoke], break_it: Callable[[ProxmoxSim], Any],
        fragment: str) -> None:
    sim, _, invoke = lab
    break_it(sim)
    result = invoke("provision", "--only", "vm")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: preflight gpu01: ")
    assert fragment in result.stderr
    assert _writes(sim) == []


def test_a_wrong_token_is_one_line(lab: tuple[ProxmoxSim, Path, Invoke],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sim, _, invoke = lab
    monkeypatch.setenv("PVE_TEST_SECRET", "not-the-secret")
    result = invoke("provision", "--only", "vm")
    assert result.exit_code == 1
    assert result.stderr == (f"error: Proxmox refused token {sim.token_id} (invalid token "
                             "value!) (check proxmox.token_id and the secret it points at)\n")
    assert "not-the-secret" not in result.output


def test_an_unknown_host_and_a_host_without_vm_are_one_line(
        lab: tuple[ProxmoxSim, Path, Invoke]) -> None:
    _, _, invoke = lab
    result = invoke("provision", "gpu09", "--only", "vm")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: unknown host 'gpu09': not in ")
    assert result.stderr.count("\n") == 1


def test_only_host_without_its_playbook_says_so(lab: tuple[ProxmoxSim, Path, Invoke],
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, invoke = lab
    bare = tmp_path / "bare"
    (bare / "roles").mkdir(parents=True)
    (bare / "playbooks").mkdir()
    shutil.copy(REPO / "playbooks" / "vm.yml", bare / "playbooks" / "vm.yml")
    monkeypatch.setenv("HLCTL_ANSIBLE_DIR", str(bare))
    result = invoke("provision", "--only", "host")
    assert result.exit_code == 1
    assert "gpu_host.yml is missing: the host roles are not installed here" in result.stderr


@needs_ansible
@pytest.mark.slow
def test_the_role_itself_fails_preflight_with_the_fix(
        pve: tuple[ProxmoxSim, int], tmp_path: Path) -> None:
    """The role's own preflight, for people who run playbooks/vm.yml without hlctl."""
    sim, port = pve
    for device in sim.nodes["pve"]["pci"]:
        device["iommugroup"] = -1
    config = parse_provision_config({"proxmox": {
        "endpoint": f"https://127.0.0.1:{port}", "token_id": sim.token_id,
        "token_secret": {"env": "X"}, "verify_tls": False},
        "vms": {"gpu01": {"gpu_pci": "0000:01:00", "wait_for_ssh": False}}})
    from hlctl.provision.settings import role_vars

    assert config.proxmox is not None
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  children:\n    gpu_hosts:\n      hosts:\n        gpu01:\n")
    run = PlaybookRun(playbook=REPO / "playbooks" / "vm.yml", inventory=inventory,
                      host_vars={"gpu01": role_vars(config.proxmox, "gpu01",
                                                    config.vms["gpu01"])},
                      secret_env={"PROXMOX_TOKEN_SECRET": sim.token_secret})
    raw = io.StringIO()
    result = run_playbook(run, ansible_dir=REPO, environ=dict(os.environ), raw_output=raw)
    assert "TASK [proxmox_vm : Preflight | Ask the API for its version]" in raw.getvalue()
    assert sim.token_secret not in raw.getvalue()
    assert not result.ok
    (failure,) = result.failures
    assert failure.task.endswith("Preflight | Check the GPU and its IOMMU group")
    assert failure.message.startswith("IOMMU is off on node pve: add intel_iommu=on")
    assert result.hosts["gpu01"].failed == 1
    assert _writes(sim) == []


def test_secrets_stay_out_of_arguments_and_files_are_private(tmp_path: Path) -> None:
    run = PlaybookRun(playbook=REPO / "playbooks" / "vm.yml", inventory=tmp_path / "h.yml",
                      limit=("gpu01",), extra_vars={"a": 1},
                      host_vars={"gpu01": {"proxmox_vm_cores": 8}},
                      secret_env={"PROXMOX_TOKEN_SECRET": "s3cr3t-value"}, check=True)
    with private_files(run) as (vars_file, host_file):
        assert host_file is not None
        command = build_command(run, "ansible-playbook", vars_file, host_file)
        for path in (vars_file, host_file):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert "s3cr3t" not in path.read_text()
        assert stat.S_IMODE(vars_file.parent.stat().st_mode) == 0o700
        assert "proxmox_vm_cores: 8" in host_file.read_text()
    assert not vars_file.parent.exists()
    assert "s3cr3t-value" not in " ".join(command)
    assert command[-1].endswith("vm.yml") and "--check" in command
    assert command[command.index("-e") + 1] == f"@{vars_file}"


def test_vm_list_and_destroy(lab: tuple[ProxmoxSim, Path, Invoke]) -> None:
    sim, _, invoke = lab
    sim.mappings["gpu01-gpu"] = {"id": "gpu01-gpu", "map": ["node=pve,path=0000:01:00"]}
    sim.add_vm(Vm(vmid=100, node="pve", name="gpu01", status="running",
                  config={"name": "gpu01", "hostpci0": "mapping=gpu01-gpu,pcie=1"}))
    sim.add_vm(Vm(vmid=101, node="pve", name="nas", config={"name": "nas"}))
    listed = invoke("vm", "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == [
        {"vmid": 100, "name": "gpu01", "node": "pve", "status": "running",
         "gpu": ["hostpci0: mapping=gpu01-gpu,pcie=1"], "in_lab": True},
        {"vmid": 101, "name": "nas", "node": "pve", "status": "stopped", "gpu": [],
         "in_lab": False}]
    table = invoke("vm", "list")
    assert "gpu01" in table.stdout and "mapping=gpu01-gpu" in table.stdout

    refused = invoke("vm", "destroy", "gpu01")
    assert refused.exit_code == 2 and "without --yes" in refused.stderr
    assert 100 in sim.vms
    done = invoke("vm", "destroy", "gpu01", "--yes")
    assert done.exit_code == 0, done.output
    assert 100 not in sim.vms and 101 in sim.vms
    assert [c.path for c in _writes(sim)] == ["/nodes/pve/qemu/100/status/stop",
                                              "/nodes/pve/qemu/100"]
    missing = invoke("vm", "destroy", "gpu01", "--yes")
    assert missing.exit_code == 1
    assert missing.stderr == ("error: no VM named 'gpu01' on the cluster "
                              "(see 'hlctl vm list')\n")


def _client(sim: ProxmoxSim, port: int, secret: str | None = None) -> ProxmoxClient:
    config = parse_provision_config({"proxmox": {
        "endpoint": f"https://127.0.0.1:{port}", "token_id": sim.token_id,
        "token_secret": {"env": "X"}, "verify_tls": False}})
    assert config.proxmox is not None
    return ProxmoxClient(config.proxmox, secret or sim.token_secret)


def test_simulator_refuses_what_proxmox_refuses(pve: tuple[ProxmoxSim, int]) -> None:
    sim, port = pve
    sim.add_vm(Vm(vmid=100, node="pve", name="gpu01", config={"name": "gpu01"}))
    with _client(sim, port) as client:
        with pytest.raises(ProxmoxApiError,
                           match="only root can set 'hostpci0' config for non-mapped devices"):
            client.request("PUT", "/nodes/pve/qemu/100/config", {"hostpci0": "0000:01:00"})
        with pytest.raises(ProxmoxApiError, match="no such PCI resource mapping 'gpu'"):
            client.request("PUT", "/nodes/pve/qemu/100/config",
                           {"hostpci0": "mapping=gpu,pcie=1"})
        with pytest.raises(ProxmoxApiError, match="unable to create VM 100: config file "
                                                  "already exists"):
            client.request("POST", "/nodes/pve/qemu/9000/clone", {"newid": 100})
        with pytest.raises(ProxmoxApiError, match="VM 100 already exists"):
            client.get("/cluster/nextid", vmid=100)
        with pytest.raises(ProxmoxApiError, match="efidisk0: invalid format"):
            # What proxmox_kvm's update mode sends for unset efidisk0 options.
            client.request("PUT", "/nodes/pve/qemu/100/config",
                           {"efidisk0": "local-lvm:1,efitype=4m,format=None"})
    with _client(sim, port, "wrong") as client, pytest.raises(ProxmoxApiError) as info:
        client.get("/version")
    assert info.value.status == 401


def test_a_failed_start_task_names_the_fix_on_the_host(pve: tuple[ProxmoxSim, int]) -> None:
    sim, port = pve
    sim.mappings["gpu"] = {"id": "gpu", "map": ["node=pve,path=0000:01:00"]}
    sim.add_vm(Vm(vmid=100, node="pve", name="gpu01",
                  config={"name": "gpu01", "hostpci0": "mapping=gpu,pcie=1"}))
    sim.add_vm(Vm(vmid=105, node="pve", name="old", status="running",
                  config={"name": "old", "hostpci0": "mapping=gpu,pcie=1"}))
    with _client(sim, port) as client:
        upid = client.request("POST", "/nodes/pve/qemu/100/status/start")
        assert upid.startswith("UPID:pve:") and ":qmstart:100:" in upid
        with pytest.raises(ProxmoxApiError) as info:
            client.wait_task("pve", upid, timeout_s=10, what="starting gpu01")
        assert str(info.value) == ("starting gpu01 failed: PCI device '0000:01:00.0' already "
                                   "in use by VMID '105' (another VM holds the GPU: stop it or "
                                   "remove its hostpci entry)")
        sim.task_errors[("qmstart", 105)] = "vfio 0000:01:00.0: failed to setup container"
        sim.vms[105].status = "stopped"
        upid = client.request("POST", "/nodes/pve/qemu/105/status/start")
        with pytest.raises(ProxmoxApiError, match="vfio_iommu_type1"):
            client.wait_task("pve", upid, timeout_s=10, what="starting old")


def _filters() -> Any:
    path = REPO / "roles" / "proxmox_vm" / "filter_plugins" / "proxmox_vm.py"
    spec = importlib.util.spec_from_file_location("proxmox_vm_filters", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_role_sends_only_what_differs_and_keeps_the_mac() -> None:
    filters = _filters()
    current = {"cores": 8, "memory": "16384", "net0": "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0",
               "efidisk0": "local-lvm:vm-100-disk-1,efitype=4m,pre-enrolled-keys=0,size=4M"}
    desired = {"cores": "8", "memory": 16384, "net0": "virtio,bridge=vmbr0",
               "efidisk0": {"efitype": "4m", "pre_enrolled_keys": 0}, "nameserver": ""}
    assert filters.config_changes(current, desired, "local-lvm") == {}
    moved = {**desired, "net0": "virtio,bridge=vmbr1,tag=20"}
    assert filters.config_changes(current, moved, "local-lvm") == {
        "net0": "virtio=BC:24:11:AA:BB:CC,bridge=vmbr1,tag=20"}
    enrolled = {**current, "efidisk0": "local-lvm:vm-100-disk-1,pre-enrolled-keys=1"}
    with pytest.raises(ValueError, match="pre-enrolled Secure Boot keys"):
        filters.config_changes(enrolled, desired, "local-lvm")
    assert filters.disk_gib("local-lvm:vm-100-disk-0,size=2G") == 2
    assert filters.disk_gib("local-lvm:vm-100-disk-0,size=512M") == 0.5


def test_simulator_ticket_auth_csrf_and_async_config(pve: tuple[ProxmoxSim, int]) -> None:
    """Ticket login as root, the CSRF token on writes, and POST config as a UPID task."""
    import httpx

    sim, port = pve
    sim.add_vm(Vm(vmid=100, node="pve", name="gpu01", config={"name": "gpu01"}))
    base = f"https://127.0.0.1:{port}/api2/json"
    with httpx.Client(verify=False) as http:
        refused = http.post(f"{base}/access/ticket", data={"username": "root@pam",
                                                           "password": "wrong"})
        assert refused.status_code == 401 and refused.json() == {"data": None}
        login = http.post(f"{base}/access/ticket", data={"username": "root@pam",
                                                         "password": "rootpass"}).json()["data"]
        cookie = {"Cookie": f"PVEAuthCookie={login['ticket']}"}
        csrf = {**cookie, "CSRFPreventionToken": login["CSRFPreventionToken"]}
        no_csrf = http.post(f"{base}/nodes/pve/qemu/100/config", headers=cookie,
                            data={"hostpci0": "0000:01:00,pcie=1"})
        assert no_csrf.status_code == 401
        upid = http.post(f"{base}/nodes/pve/qemu/100/config", headers=csrf,
                         data={"hostpci0": "0000:01:00,pcie=1"}).json()["data"]
        assert upid.startswith("UPID:pve:") and upid.endswith(":qmconfig:100:root@pam:")
        status = http.get(f"{base}/nodes/pve/tasks/{upid}/status", headers=cookie)
        assert status.json()["data"]["status"] in ("running", "stopped")
        bad = http.put(f"{base}/nodes/pve/qemu/100/config", headers=csrf,
                       data={"cores": "many"})
        assert bad.status_code == 400
        assert bad.json() == {"data": None,
                              "errors": {"cores": "type check ('integer') failed - got 'many'"}}
    # root may set a raw address; the token may not (see the test above)
    assert sim.vms[100].config["hostpci0"] == "0000:01:00,pcie=1"


def test_only_vm_without_a_proxmox_section_is_a_config_error(
        lab: tuple[ProxmoxSim, Path, Invoke]) -> None:
    _, config, invoke = lab
    config.write_text("models_dir: /tmp\n")
    result = invoke("provision", "--only", "vm")
    assert result.exit_code == 2
    assert result.stderr == (f"error: {config}: no proxmox section (add proxmox: and vms: "
                             "(see hlctl.example.yaml))\n")


@needs_ansible
@pytest.mark.slow
def test_an_efi_disk_with_secure_boot_keys_stops_the_run_with_the_fix(
        lab: tuple[ProxmoxSim, Path, Invoke]) -> None:
    sim, _, invoke = lab
    sim.mappings["gpu01-gpu"] = {"id": "gpu01-gpu", "map": ["node=pve,path=0000:01:00"]}
    sim.add_vm(Vm(vmid=100, node="pve", name="gpu01", config={
        "name": "gpu01", "scsi0": "local-lvm:vm-100-disk-0,size=64G",
        "efidisk0": "local-lvm:vm-100-disk-1,efitype=4m,pre-enrolled-keys=1,size=4M"}))
    result = invoke("provision", "--only", "vm", "--json")
    assert result.exit_code == 1
    (failure,) = json.loads(result.stdout)["runs"][0]["failures"]
    assert failure["task"].endswith("Hardware | Work out which settings differ")
    assert failure["message"] == (
        "efidisk0 has pre-enrolled Secure Boot keys, which reject the unsigned DKMS nvidia "
        "module: remove the EFI disk in the Proxmox UI (Hardware > EFI Disk > Remove) and run "
        "again")
    assert _writes(sim) == []
