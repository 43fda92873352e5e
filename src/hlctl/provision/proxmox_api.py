"""The thin HTTP edge to the Proxmox API, for preflight and ``hlctl vm list/destroy``.

Responses are hostile input: only the fields we use are read, and their types are checked
where a wrong type would mislead a decision.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from hlctl.errors import HlctlError
from hlctl.provision.preflight import ProxmoxFacts, VmPlan, explain_task_error
from hlctl.provision.settings import ProxmoxSettings


class ProxmoxApiError(HlctlError):
    """The API refused or could not be reached; the message is one line."""

    def __init__(self, message: str, *, status: int | None = None, hint: str | None = None
                 ) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class ProxmoxClient:
    """GET/POST/DELETE with token auth and Proxmox's ``{"data": ...}`` envelope."""

    def __init__(self, settings: ProxmoxSettings, secret: str, *, timeout: float = 30,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        # The secret lives only in this header; it is never logged or put in an error.
        self._http = httpx.Client(
            base_url=settings.api_url, verify=settings.verify_tls, timeout=timeout,
            headers={"Authorization": f"PVEAPIToken={settings.token_id}={secret}"},
            transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ProxmoxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, params: Mapping[str, Any] | None = None) -> Any:
        try:
            if method == "GET" or method == "DELETE":
                response = self._http.request(method, path, params=params)
            else:
                response = self._http.request(method, path, data=params or {})
        except httpx.ConnectError as exc:
            raise ProxmoxApiError(f"cannot reach the Proxmox API at {self.settings.api_url}: "
                                  f"{exc}", hint="check proxmox.endpoint") from None
        except httpx.HTTPError as exc:
            raise ProxmoxApiError(f"Proxmox API {method} {path}: {exc}") from None
        if response.status_code == 401:
            raise ProxmoxApiError(
                f"Proxmox refused token {self.settings.token_id} ({response.reason_phrase})",
                status=401, hint="check proxmox.token_id and the secret it points at")
        if response.status_code >= 400:
            detail = response.reason_phrase
            try:
                errors = response.json().get("errors")
            except ValueError:
                errors = None
            if isinstance(errors, dict) and errors:
                detail += " " + "; ".join(f"{k}: {v}" for k, v in errors.items())
            raise ProxmoxApiError(f"Proxmox API {method} {path}: {response.status_code} "
                                  f"{detail}", status=response.status_code)
        try:
            return response.json()["data"]
        except (ValueError, KeyError, TypeError):
            raise ProxmoxApiError(f"Proxmox API {method} {path}: not a Proxmox answer") from None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params or None)

    def wait_task(self, node: str, upid: str, *, timeout_s: float, what: str,
                  sleep: Callable[[float], None] = time.sleep) -> None:
        """Poll a UPID until it stops; raise with its exit status (and a hint) unless OK."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.get(f"/nodes/{node}/tasks/{quote(upid, safe='')}/status")
            if isinstance(status, dict) and status.get("status") == "stopped":
                exit_status = str(status.get("exitstatus", ""))
                if exit_status != "OK":
                    raise ProxmoxApiError(f"{what} failed: {explain_task_error(exit_status)}")
                return
            if time.monotonic() > deadline:
                raise ProxmoxApiError(f"{what}: still running after {timeout_s:g} s")
            sleep(0.5)


def _list(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")


def _vms(client: ProxmoxClient) -> list[dict[str, Any]]:
    """QEMU VMs of /cluster/resources whose node and vmid are safe to put in a URL path."""
    return [v for v in _list(client.get("/cluster/resources", type="vm"))
            if v.get("type", "qemu") == "qemu" and isinstance(v.get("vmid"), int)
            and isinstance(v.get("node"), str) and _NODE.match(v["node"])]


def gather_facts(client: ProxmoxClient, plan: VmPlan) -> ProxmoxFacts:
    """Read what preflight needs: one GET per fact, plus each other VM's config."""
    client.get("/version")  # the cheapest call that proves address and token
    nodes = _list(client.get("/nodes"))
    if not any(n.get("node") == plan.node for n in nodes):
        return ProxmoxFacts(nodes, [], None, [], {}, [], None)
    vms = _vms(client)
    template = next((v for v in vms if v.get("name") == plan.template
                     and v.get("template") == 1), None)
    template_config = (client.get(f"/nodes/{template['node']}/qemu/{template['vmid']}/config")
                       if template else None)
    configs: dict[int, dict[str, Any]] = {}
    for vm in vms:
        if vm.get("template") != 1:
            config = client.get(f"/nodes/{vm['node']}/qemu/{vm['vmid']}/config")
            configs[vm["vmid"]] = config if isinstance(config, dict) else {}
    try:
        storage = client.get(f"/nodes/{plan.node}/storage/{plan.storage}/status")
    except ProxmoxApiError as exc:
        if exc.status is None or exc.status < 500:
            raise
        storage = None  # Proxmox answers 500 for a storage the node does not have
    return ProxmoxFacts(
        nodes=nodes, vms=vms,
        template_config=template_config if isinstance(template_config, dict) else None,
        pci=_list(client.get(f"/nodes/{plan.node}/hardware/pci")),
        vm_configs=configs, mappings=_list(client.get("/cluster/mapping/pci")),
        storage=storage if isinstance(storage, dict) else None)


@dataclass(frozen=True)
class VmRow:
    vmid: int
    name: str
    node: str
    status: str
    gpu: list[str]
    in_lab: bool

    def to_dict(self) -> dict[str, Any]:
        return {"vmid": self.vmid, "name": self.name, "node": self.node, "status": self.status,
                "gpu": self.gpu, "in_lab": self.in_lab}


def list_vms(client: ProxmoxClient, lab_names: set[str]) -> list[VmRow]:
    """Every VM (not templates) with its state and its hostpci devices."""
    rows = []
    for vm in _vms(client):
        if vm.get("template") == 1:
            continue
        config = client.get(f"/nodes/{vm['node']}/qemu/{vm['vmid']}/config")
        config = config if isinstance(config, dict) else {}
        gpus = [f"{k}: {v}" for k, v in sorted(config.items()) if k.startswith("hostpci")]
        name = str(vm.get("name", ""))
        rows.append(VmRow(int(vm["vmid"]), name, str(vm.get("node")), str(vm.get("status")),
                          gpus, name in lab_names))
    return sorted(rows, key=lambda r: r.vmid)


def destroy_vm(client: ProxmoxClient, name: str, *, timeout_s: float,
               progress: Callable[[str], None] = lambda _: None) -> int:
    """Stop (hard) and delete the VM named ``name`` with its disks; return its vmid."""
    matches = [v for v in _vms(client) if v.get("name") == name]
    if not matches:
        raise ProxmoxApiError(f"no VM named {name!r} on the cluster",
                              hint="see 'hlctl vm list'")
    if len(matches) > 1:
        raise ProxmoxApiError(f"several VMs are named {name!r} "
                              f"({', '.join(str(v.get('vmid')) for v in matches)}): remove the "
                              "right one in the Proxmox UI")
    vm = matches[0]
    if vm.get("template") == 1:
        raise ProxmoxApiError(f"{name!r} is a template; hlctl does not destroy templates")
    node, vmid = str(vm["node"]), int(vm["vmid"])
    status = client.get(f"/nodes/{node}/qemu/{vmid}/status/current")
    if isinstance(status, dict) and status.get("status") == "running":
        progress(f"stopping {name} ({vmid})")
        upid = client.request("POST", f"/nodes/{node}/qemu/{vmid}/status/stop")
        client.wait_task(node, str(upid), timeout_s=timeout_s, what=f"stopping {name}")
    progress(f"destroying {name} ({vmid})")
    upid = client.request("DELETE", f"/nodes/{node}/qemu/{vmid}",
                          {"purge": 1, "destroy-unreferenced-disks": 1})
    client.wait_task(node, str(upid), timeout_s=timeout_s, what=f"destroying {name}")
    return vmid
