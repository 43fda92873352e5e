"""Read the lab's inventory (``inventory/hosts.yml``, Ansible's YAML inventory format).

Only what hlctl needs: hosts, their groups and their variables (group vars first, host vars
over them). Numeric host ranges (``gpu[01:03]``) expand as Ansible expands them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hlctl.errors import ConfigError, UsageError
from hlctl.yamlfile import read_yaml_file

DEFAULT_INVENTORY = Path("inventory") / "hosts.yml"
_RANGE = re.compile(r"^(.*)\[(\d+):(\d+)\](.*)$")
_GROUP_KEYS = {"hosts", "vars", "children"}


@dataclass(frozen=True)
class InventoryHost:
    name: str
    groups: tuple[str, ...]
    vars: Mapping[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return str(self.vars.get("ansible_host", self.name))


@dataclass(frozen=True)
class Inventory:
    path: Path
    hosts: Mapping[str, InventoryHost]

    def group(self, name: str) -> list[InventoryHost]:
        return [h for h in self.hosts.values() if name in h.groups]

    def select(self, names: Iterable[str]) -> list[InventoryHost]:
        """The named hosts, in the order given; a name may also be a group."""
        out: list[InventoryHost] = []
        for name in names:
            found = [self.hosts[name]] if name in self.hosts else self.group(name)
            if not found:
                known = ", ".join(sorted(self.hosts)) or "none"
                raise UsageError(f"unknown host {name!r}: not in {self.path} (hosts: {known})")
            out += [h for h in found if h not in out]
        return out


def find_inventory(explicit: Path | None, environ: Mapping[str, str],
                   cwd: Path | None = None) -> Path:
    """``--inventory``, then ``$HLCTL_INVENTORY``, then ./inventory/hosts.yml."""
    if explicit is not None:
        return explicit
    if environ.get("HLCTL_INVENTORY"):
        return Path(environ["HLCTL_INVENTORY"])
    return (cwd or Path.cwd()) / DEFAULT_INVENTORY


def _expand(pattern: str) -> list[str]:
    match = _RANGE.match(pattern)
    if not match:
        return [pattern]
    head, start, end, tail = match.groups()
    width = len(start) if start.startswith("0") else 0
    return [f"{head}{i:0{width}d}{tail}" for i in range(int(start), int(end) + 1)]


class _Walker:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.groups: dict[str, list[str]] = {}
        self.host_vars: dict[str, dict[str, Any]] = {}
        self.group_vars: dict[str, dict[str, Any]] = {}
        self.parents: dict[str, set[str]] = {}

    def fail(self, where: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {where}: {problem}",
                           hint="see Ansible's YAML inventory format or run 'hlctl init'")

    def group(self, name: str, body: Any, where: str) -> None:
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise self.fail(where, "a group must be a mapping with hosts, vars or children")
        unknown = sorted(set(body) - _GROUP_KEYS)
        if unknown:
            raise self.fail(where, f"unknown key {unknown[0]!r} (a group has hosts, vars, "
                                   "children)")
        self.groups.setdefault(name, [])
        gvars = body.get("vars") or {}
        if not isinstance(gvars, dict):
            raise self.fail(f"{where}.vars", "must be a mapping of variables")
        self.group_vars.setdefault(name, {}).update(gvars)
        hosts = body.get("hosts") or {}
        if not isinstance(hosts, dict):
            raise self.fail(f"{where}.hosts", "must be a mapping of host names "
                                              "(host: or host: {vars})")
        for pattern, hvars in hosts.items():
            if hvars is not None and not isinstance(hvars, dict):
                raise self.fail(f"{where}.hosts.{pattern}", "host variables must be a mapping")
            for host in _expand(str(pattern)):
                self.groups[name].append(host)
                self.host_vars.setdefault(host, {}).update(hvars or {})
        children = body.get("children") or {}
        if not isinstance(children, dict):
            raise self.fail(f"{where}.children", "must be a mapping of group names")
        for child, child_body in children.items():
            self.parents.setdefault(str(child), set()).add(name)
            self.group(str(child), child_body, f"{where}.children.{child}")

    def ancestors(self, group: str, seen: set[str] | None = None) -> list[str]:
        seen = seen if seen is not None else set()
        out = []
        for parent in sorted(self.parents.get(group, ())):
            if parent not in seen:
                seen.add(parent)
                out += [*self.ancestors(parent, seen), parent]
        return out


def parse_inventory(data: Any, path: Path) -> Inventory:
    walker = _Walker(path)
    if data is None:
        raise walker.fail("(top level)", "the inventory is empty")
    if not isinstance(data, dict):
        raise walker.fail("(top level)", "must be a mapping of groups (all: ...)")
    for name, body in data.items():
        walker.group(str(name), body, str(name))
    hosts: dict[str, InventoryHost] = {}
    for group, members in walker.groups.items():
        for host in members:
            groups = {group, *walker.ancestors(group), "all"}
            prior = hosts.get(host)
            if prior:
                groups |= set(prior.groups)
            hosts[host] = InventoryHost(host, tuple(sorted(groups)))
    for host, entry in list(hosts.items()):
        merged: dict[str, Any] = {}
        # Ansible's order: parents before children, then the host's own vars.
        for group in ["all", *sorted((g for g in entry.groups if g != "all"),
                                     key=lambda g: len(walker.ancestors(g)))]:
            merged.update(walker.group_vars.get(group, {}))
        merged.update(walker.host_vars.get(host, {}))
        hosts[host] = InventoryHost(host, entry.groups, merged)
    return Inventory(path=path, hosts=hosts)


def load_inventory(path: Path) -> Inventory:
    """Read and check the inventory; every problem is one ConfigError line."""
    data = read_yaml_file(path, what="inventory",
                          missing_hint="run 'hlctl init' or pass --inventory")
    return parse_inventory(data, path)
