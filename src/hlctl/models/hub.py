"""Hugging Face hub metadata: GGUF files of a repo, their sizes and sha256, revision -> commit.

Everything here is hostile input: file names from a listing are checked before any local path
is built from them. huggingface_hub is imported lazily (``hlctl --help`` stays light) and
always gets the endpoint explicitly, because it reads ``HF_ENDPOINT`` only at import time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from hlctl.errors import HlctlError, UsageError

DEFAULT_ENDPOINT = "https://huggingface.co"
GATED_MESSAGE = "this repo is gated: accept its licence on the hub and set HF_TOKEN"

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SHARD = re.compile(r"^(?P<base>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
# Quant names as llama.cpp and the big uploaders spell them: Q4_K_M, IQ4_XS, Q8_0, UD-Q4_K_XL,
# F16, BF16, MXFP4_MOE ... bounded by '-', '.', '_' or the ends of the stem.
_QUANT = re.compile(
    r"(?:^|[-._])(?P<quant>(?:UD-)?(?:Q\d_(?:[0-9]|K)(?:_(?:S|M|L|XL))?"
    r"|IQ\d_(?:XXS|XS|S|M|NL)|TQ\d_\d|BF16|F16|FP16|F32|FP32|MXFP4(?:_MOE)?))(?=$|[-.])",
    re.IGNORECASE,
)
_MAX_NAME = 1024


class HubError(HlctlError):
    """The hub answered, but not with what we need (missing repo, file, revision)."""


class GatedRepoError(HubError):
    def __init__(self, repo: str) -> None:
        super().__init__(f"{repo}: {GATED_MESSAGE}")


class HostileNameError(HubError):
    """A file name from the hub that must never become a local path."""


@dataclass(frozen=True)
class RemoteFile:
    """One GGUF file of a repo as the hub describes it."""

    path: str
    size: int
    sha256: str | None
    quant: str | None
    shard_index: int | None = None  # 1-based
    shard_count: int | None = None

    @property
    def model_name(self) -> str:
        """The name shared by all shards: ``dir/Model-Q4_K_M`` for ``...-00001-of-00003.gguf``."""
        match = _SHARD.match(self.path)
        if match is not None:
            return match["base"]
        return self.path[:-5] if self.path.lower().endswith(".gguf") else self.path


@dataclass(frozen=True)
class RemoteModel:
    """A model as the user names it: one file, or every shard of a split GGUF."""

    name: str
    quant: str | None
    files: tuple[RemoteFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def shard_count(self) -> int:
        return len(self.files)

    @property
    def complete(self) -> bool:
        count = self.files[0].shard_count
        if count is None:
            return len(self.files) == 1
        return sorted(f.shard_index or 0 for f in self.files) == list(range(1, count + 1))


@dataclass(frozen=True)
class RepoListing:
    repo: str
    revision: str
    commit: str
    files: tuple[RemoteFile, ...]
    gated: bool = False

    @property
    def models(self) -> list[RemoteModel]:
        return group_models(self.files)


# -- pure logic ---------------------------------------------------------------------------------

def parse_quant(path: str) -> str | None:
    """The quant named in a GGUF file name, upper-cased; None when it names none."""
    stem = PurePosixPath(path).name
    shard = _SHARD.match(stem)
    stem = shard["base"] if shard else re.sub(r"\.gguf$", "", stem, flags=re.IGNORECASE)
    found = [m["quant"] for m in _QUANT.finditer(stem)]
    return found[-1].upper() if found else None


def parse_shard(path: str) -> tuple[int, int] | None:
    match = _SHARD.match(PurePosixPath(path).name)
    if match is None:
        return None
    return int(match["index"]), int(match["count"])


def check_remote_name(path: str) -> None:
    """Refuse a hub file name that could escape a directory or confuse a filesystem."""
    reason = None
    if not path or len(path) > _MAX_NAME:
        reason = "empty or overlong"
    elif "\0" in path:
        reason = "contains NUL"
    elif "\\" in path:
        reason = "contains a backslash"
    elif path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        reason = "is absolute"
    elif any(part in ("", ".", "..") for part in path.split("/")):
        reason = "has an empty, '.' or '..' segment"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        reason = "contains control characters"
    elif any(part.startswith(".") for part in path.split("/")):
        reason = "has a hidden segment"  # our temp and lock files start with '.'
    if reason is not None:
        raise HostileNameError(f"refusing hub file name {path!r}: it {reason}")


def check_repo_id(repo: str) -> None:
    if not _REPO_ID.match(repo) or ".." in repo:
        raise UsageError(f"{repo!r} is not a hub repo id", hint="use OWNER/NAME")


def local_path(models_dir: Path, repo: str, path: str) -> Path:
    """Where a hub file lives on disk: MODELS_DIR/OWNER/NAME/PATH, checked to stay inside."""
    check_repo_id(repo)
    check_remote_name(path)
    root = models_dir.resolve()
    target = (root / repo / path).resolve()
    if not target.is_relative_to(root) or target == root:
        raise HostileNameError(f"refusing hub file name {path!r}: it resolves outside {root}")
    return root / repo / path


def group_models(files: Iterable[RemoteFile]) -> list[RemoteModel]:
    """Group the shards of split GGUFs into one model each; order by name."""
    groups: dict[str, list[RemoteFile]] = {}
    for remote in files:
        groups.setdefault(remote.model_name, []).append(remote)
    models = []
    for name, members in sorted(groups.items()):
        members.sort(key=lambda f: f.shard_index or 0)
        models.append(RemoteModel(name=name, quant=members[0].quant, files=tuple(members)))
    return models


def select_model(models: list[RemoteModel], *, file: str | None = None,
                 quant: str | None = None, repo: str = "") -> RemoteModel:
    """Pick the one model that FILE or --quant names; explain the choices when it is not one."""
    if file is not None:
        wanted = file[:-5] if file.lower().endswith(".gguf") else file
        for model in models:
            if model.name == wanted or any(f.path == file for f in model.files):
                return _complete(model)
        raise UsageError(f"{repo} has no GGUF file {file!r}",
                         hint=f"files: {', '.join(m.name for m in models) or 'none'}")
    candidates = [m for m in models if not PurePosixPath(m.name).name.startswith("mmproj")]
    if quant is not None:
        candidates = [m for m in candidates if (m.quant or "").upper() == quant.upper()
                      or (m.quant or "").upper().removeprefix("UD-") == quant.upper()]
        if not candidates:
            quants = sorted({m.quant for m in models if m.quant})
            raise UsageError(f"{repo} has no {quant.upper()} GGUF",
                             hint=f"quants: {', '.join(quants) or 'none named'}")
    if len(candidates) == 1:
        return _complete(candidates[0])
    if not candidates:
        raise UsageError(f"{repo} has no GGUF files")
    names = ", ".join(m.name for m in candidates[:8])
    raise UsageError(f"{repo} has {len(candidates)} GGUF models; name one",
                     hint=f"give FILE or --quant; models: {names}")


def _complete(model: RemoteModel) -> RemoteModel:
    if not model.complete:
        have = ", ".join(str(f.shard_index) for f in model.files)
        raise HubError(f"{model.name}: the hub lists only shards {have} of "
                       f"{model.files[0].shard_count}")
    return model


def remote_file(path: str, size: int | None, sha256: str | None) -> RemoteFile:
    check_remote_name(path)
    if size is None or size < 0:
        raise HubError(f"the hub gives no size for {path}")
    if sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise HubError(f"the hub gives a malformed sha256 for {path}: {sha256[:80]!r}")
    shard = parse_shard(path)
    return RemoteFile(path=path, size=size, sha256=sha256, quant=parse_quant(path),
                      shard_index=shard[0] if shard else None,
                      shard_count=shard[1] if shard else None)


# -- edges: the hub ---------------------------------------------------------------------------

def default_endpoint(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return (environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def default_token(environ: Mapping[str, str] | None = None) -> str | None:
    """HF_TOKEN, else the token `hf auth login` saved; None when there is neither."""
    environ = os.environ if environ is None else environ
    if environ.get("HF_TOKEN"):
        return environ["HF_TOKEN"]
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # a broken token file must not stop anonymous pulls
        return None


def resolve_url(repo: str, revision: str, path: str, endpoint: str) -> str:
    """The download URL of one file, pinned to ``revision`` (use the commit sha)."""
    check_repo_id(repo)
    check_remote_name(path)
    return (f"{endpoint.rstrip('/')}/{repo}/resolve/{quote(revision, safe='')}/"
            f"{quote(path, safe='/')}")


def fetch_listing(repo: str, revision: str = "main", *, endpoint: str,
                  token: str | None) -> RepoListing:
    """One model-info call: the commit the revision points at and every GGUF file with sha256."""
    check_repo_id(repo)
    api = _api(endpoint, token)
    info = _call(repo, revision, lambda: api.model_info(repo, revision=revision,
                                                       files_metadata=True))
    commit = getattr(info, "sha", None)
    if not isinstance(commit, str) or not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise HubError(f"{repo}@{revision}: the hub gives no commit sha")
    files = []
    for sibling in info.siblings or []:
        name = sibling.rfilename
        if not isinstance(name, str) or not name.lower().endswith(".gguf"):
            continue
        lfs = sibling.lfs
        sha256 = lfs.sha256 if lfs is not None else None
        size = lfs.size if lfs is not None else sibling.size
        files.append(remote_file(name, size, sha256))
    return RepoListing(repo=repo, revision=revision, commit=commit, files=tuple(files),
                       gated=bool(getattr(info, "gated", False)))


def list_gguf_files(repo: str, revision: str = "main", *, endpoint: str,
                    token: str | None) -> list[RemoteFile]:
    """Every GGUF file of a repo at a revision, names checked, with size, sha256 and quant."""
    return list(fetch_listing(repo, revision, endpoint=endpoint, token=token).files)


def resolve_revision(repo: str, revision: str, *, endpoint: str, token: str | None) -> str:
    return fetch_listing(repo, revision, endpoint=endpoint, token=token).commit


def paths_info(repo: str, commit: str, paths: list[str], *, endpoint: str,
               token: str | None) -> dict[str, RemoteFile]:
    """size and sha256 (``lfs.oid``) of named files at a commit; used by ``--locked``."""
    api = _api(endpoint, token)
    entries = _call(repo, commit, lambda: api.get_paths_info(repo, paths, revision=commit))
    found = {}
    for entry in entries:
        lfs = getattr(entry, "lfs", None)
        if lfs is None and not hasattr(entry, "size"):
            continue  # a folder
        found[entry.path] = remote_file(entry.path, lfs.size if lfs else entry.size,
                                        lfs.sha256 if lfs else None)
    return found


def _api(endpoint: str, token: str | None) -> Any:
    from huggingface_hub import HfApi

    # token=False: never fall back to a saved token the caller did not choose to send.
    return HfApi(endpoint=endpoint, token=token if token else False)


class _Retry(Exception):
    def __init__(self, error: HubError) -> None:
        self.error = error


def _call(repo: str, revision: str, fn: Any, *, attempts: int = 4,
          sleep: Any = None) -> Any:
    """Call the hub, retrying 429/5xx and network errors with backoff; one sentence on failure."""
    import time

    sleep = sleep or time.sleep
    for attempt in range(attempts):
        try:
            return _call_once(repo, revision, fn)
        except _Retry as retry:
            if attempt == attempts - 1:
                raise retry.error from None
            sleep(min(8.0, 0.5 * 2 ** attempt))
    raise AssertionError("unreachable")


def _call_once(repo: str, revision: str, fn: Any) -> Any:
    from huggingface_hub import errors as hf_errors

    try:
        return fn()
    except hf_errors.GatedRepoError:
        raise GatedRepoError(repo) from None
    except hf_errors.RevisionNotFoundError:
        raise HubError(f"{repo} has no revision {revision!r}") from None
    except hf_errors.RepositoryNotFoundError:
        raise HubError(f"{repo} was not found on the hub",
                       hint="check the name; a private repo needs HF_TOKEN") from None
    except hf_errors.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise GatedRepoError(repo) from None
        error = HubError(f"{repo}: the hub answered HTTP {status}")
        if status is not None and (status == 429 or status >= 500):
            raise _Retry(error) from None
        raise error from None
    except (OSError, ValueError) as exc:
        # httpx transport errors are OSError-like; give the endpoint so a typo shows.
        raise _Retry(HubError(f"{repo}: cannot reach the hub: {type(exc).__name__}: {exc}")) \
            from None
    except Exception as exc:
        if type(exc).__module__.startswith(("httpx", "httpcore", "httpx2")):
            raise _Retry(HubError(f"{repo}: cannot reach the hub: {type(exc).__name__}: {exc}")) \
                from None
        raise
