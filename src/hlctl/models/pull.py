"""Pull models: resolve on the hub, check names, fit and disk, download verified, pin in the lock.

The CLI (hlctl.cli.models_pull) parses and prints; this module decides and calls the edges
(hub metadata, the downloader, the lock file). Progress goes through a ``Reporter`` so the
CLI can show a bar on a TTY and nothing in --json.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from hlctl.errors import HlctlError, UsageError
from hlctl.models.download import DownloadSpec, bytes_to_fetch, download, new_client
from hlctl.models.hub import (
    HubError,
    RemoteModel,
    RepoListing,
    fetch_listing,
    local_path,
    paths_info,
    resolve_url,
    select_model,
)
from hlctl.models.localfile import ProgressFn, check_space, host_ram_bytes
from hlctl.models.lock import LockedFile, LockedModel, locked_update, read_lock

GIB = 1 << 30


@dataclass(frozen=True)
class PullTarget:
    models_dir: Path
    lock_file: Path
    endpoint: str
    token: str | None


@dataclass(frozen=True)
class Reporter:
    """Where progress goes: a task per file, a note when waiting for another pull."""

    task: Callable[[str, int], ProgressFn | None]
    waiting: Callable[[Path], None]
    running: Callable[[], AbstractContextManager[Any]]


def pull_model(target: PullTarget, repo: str, *, file: str | None, quant: str | None,
               revision: str, fit: FitRequest | None, reporter: Reporter,
               now: datetime) -> dict[str, Any]:
    """Resolve, check (names, fit, disk), download verified, and pin one model in the lock."""
    endpoint, token = target.endpoint, target.token
    listing = fetch_listing(repo, revision, endpoint=endpoint, token=token)
    model = select_model(listing.models, file=file, quant=quant, repo=repo)
    for remote in model.files:
        if remote.sha256 is None:
            raise HubError(f"{remote.path} has no sha256 on the hub (not an LFS file): "
                           "hlctl cannot verify it")
    fit_result = (fit_check_before_pull(listing, model, endpoint, token, fit)
                  if fit is not None else {"checked": False, "reason": "--no-fit-check"})
    files = [(f.path, f.size, f.sha256 or "") for f in model.files]
    results = download_files(target, repo, listing.commit, files, reporter)
    with locked_update(target.lock_file) as lock:
        lock.upsert(LockedModel(
            repo=repo, name=model.name, revision=revision, commit=listing.commit,
            quant=model.quant, pulled_at=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            files=tuple(LockedFile(path, size, sha) for path, size, sha in files)))
    return {"repo": repo, "name": model.name, "quant": model.quant, "revision": revision,
            "commit": listing.commit, "size": model.size, "fit": fit_result, "files": results}


def pull_locked(target: PullTarget, repo: str | None,
                reporter: Reporter) -> list[dict[str, Any]]:
    """Pull exactly the files models.lock pins (all, or REPO's), at the pinned commits."""
    lock_file = target.lock_file
    lock = read_lock(lock_file)
    chosen = [m for m in lock.models if repo is None or m.repo == repo]
    if not chosen:
        raise UsageError(f"{lock_file} lists no models" + (f" of {repo}" if repo else ""),
                         hint="pull without --locked first; that writes the lock")
    results = []
    for model in chosen:
        # The lock is the authority, but a hub that disagrees about a pinned commit is a red flag.
        remote = paths_info(model.repo, model.commit, [f.path for f in model.files],
                            endpoint=target.endpoint, token=target.token)
        for locked_file in model.files:
            found = remote.get(locked_file.path)
            if found is None:
                raise HubError(f"{model.repo}@{model.commit[:12]} no longer has {locked_file.path}")
            if (found.sha256, found.size) != (locked_file.sha256, locked_file.size):
                raise HubError(
                    f"{model.repo}@{model.commit[:12]}: {locked_file.path} on the hub "
                    f"(sha256 {found.sha256}, {found.size} bytes) differs from {lock_file} "
                    f"(sha256 {locked_file.sha256}, {locked_file.size} bytes)")
        files = [(f.path, f.size, f.sha256) for f in model.files]
        results.append({"repo": model.repo, "name": model.name, "quant": model.quant,
                        "revision": model.revision, "commit": model.commit, "size": model.size,
                        "files": download_files(target, model.repo, model.commit, files,
                                                reporter)})
    return results


def download_files(target: PullTarget, repo: str, commit: str,
                   files: list[tuple[str, int, str]], reporter: Reporter) -> list[dict[str, Any]]:
    """Check every name and the disk first, then fetch each file; nothing is written before."""
    root, endpoint, token = target.models_dir, target.endpoint, target.token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    specs = [DownloadSpec(url=resolve_url(repo, commit, path, endpoint),
                          dest=local_path(root, repo, path), size=size, sha256=sha256,
                          headers=headers) for path, size, sha256 in files]
    check_space(specs[0].dest.parent, sum(bytes_to_fetch(s) for s in specs))
    results = []
    with new_client() as client, reporter.running():
        for spec in specs:
            result = download(
                spec, client=client, progress=reporter.task(spec.dest.name, spec.size),
                on_wait=lambda spec=spec: reporter.waiting(spec.dest))
            results.append({"path": spec.dest.relative_to(root / repo).as_posix(),
                            "local_path": str(result.path), "size": result.size,
                            "sha256": result.sha256, "downloaded": result.downloaded,
                            "resumed_from": result.resumed_from, "skipped": result.skipped,
                            "seconds": round(result.seconds, 3)})
    return results


@dataclass(frozen=True)
class FitRequest:
    vram_bytes: int | None  # None: read GPU 0 of this host
    ctx: int


class DoesNotFit(HlctlError):
    """`hlctl models fit` says no: refuse before downloading."""


def fit_check_before_pull(listing: RepoListing, model: RemoteModel, endpoint: str,
                          token: str | None, request: FitRequest) -> dict[str, Any]:
    """Refuse a model that will not fit, before any download: hlctl.models.fit on its header.

    The header comes over HTTP Range requests (a few MB). Without --vram the VRAM is GPU 0's
    (NVML); on a machine without a GPU (a controller) the check is skipped, and says so.
    A model that fits only with part of its layers in RAM is allowed: that is a choice.
    """
    from hlctl.models.fit import estimate_fit
    from hlctl.models.gguf import GgufError, read_remote_header

    vram = request.vram_bytes
    ram = None
    if vram is None:
        vram = local_vram()
        if vram is None:
            return {"checked": False, "reason": "no GPU readable here; give --vram GIB to check"}
        ram = host_ram_bytes()
    urls = [resolve_url(listing.repo, listing.commit, f.path, endpoint) for f in model.files]
    try:
        header, fetched = read_remote_header(urls, token=token)
    except GgufError as exc:
        raise DoesNotFit(f"{model.name}: cannot read its GGUF header for the fit check: {exc}",
                         hint="--no-fit-check downloads it anyway") from None
    estimate = estimate_fit(header, request.ctx, vram, ram_bytes=ram)
    result = {"checked": True, "header_bytes_read": fetched,
              **{k: v for k, v in estimate.to_json().items()
                 if k in ("fits", "n_layers", "gpu_layers", "total_vram_bytes", "vram_bytes",
                          "full_vram_bytes", "ctx", "ram_needed_bytes", "ram_ok")}}
    if estimate.fits == "no":
        raise DoesNotFit(
            f"{model.name} does not fit: a full offload needs "
            f"{estimate.full_vram_bytes / GIB:.1f} GiB at context {estimate.ctx}, the GPU has "
            f"{vram / GIB:.1f} GiB" + ("" if estimate.ram_ok is not False
                                       else ", and RAM cannot take the rest"),
            hint="see 'hlctl models fit' for a quant that fits; --no-fit-check downloads anyway")
    return result


def local_vram() -> int | None:
    try:
        from hlctl.gpu.nvml import read_snapshot

        snapshot = read_snapshot(kernel_log=False)
    except Exception:  # no NVML library, no driver: this is not a GPU host
        return None
    if snapshot.error or not snapshot.gpus or not snapshot.gpus[0].memory_total_bytes:
        return None
    return int(snapshot.gpus[0].memory_total_bytes)


