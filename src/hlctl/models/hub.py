"""Hugging Face hub metadata: GGUF files of a repo, their sizes and sha256, revision -> commit.

Everything here is hostile input: file names from a listing are checked before any local path
is built from them. The two metadata calls (model info, paths-info) are plain httpx requests
to the hub's API rather than huggingface_hub's HfApi: importing that library costs a quarter
to most of a second per command, and we need one GET. The endpoint is passed explicitly
(``HF_ENDPOINT``, read by ``default_endpoint``). The API's shapes are pinned by the tests
against the hub fixture, which the real huggingface_hub client also reads.
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
    """HF_TOKEN, else the token `hf auth login` saved; None when there is neither.

    The saved token is read where huggingface_hub writes it (``$HF_TOKEN_PATH``, else
    ``$HF_HOME/token``, else ``~/.cache/huggingface/token``) instead of importing the library,
    whose import alone costs a quarter to most of a second on every pull.
    """
    environ = os.environ if environ is None else environ
    if environ.get("HF_TOKEN"):
        return environ["HF_TOKEN"].strip() or None
    path = environ.get("HF_TOKEN_PATH")
    if not path:
        home = environ.get("HF_HOME") or str(
            Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
        path = str(Path(home) / "token")
    try:
        token = Path(path).expanduser().read_text().strip()
    except (OSError, UnicodeDecodeError):  # no saved token, or an unreadable one: anonymous
        return None
    return token or None


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
    url = f"{endpoint.rstrip('/')}/api/models/{repo}/revision/{quote(revision, safe='')}"
    info = _call(repo, revision, lambda client: client.get(url, params={"blobs": "true"},
                                                            headers=_auth(token)))
    if not isinstance(info, dict):
        raise HubError(f"{repo}@{revision}: the hub's model info is not an object")
    commit = info.get("sha")
    if not isinstance(commit, str) or not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise HubError(f"{repo}@{revision}: the hub gives no commit sha")
    files = []
    siblings = info.get("siblings") or []
    for sibling in siblings if isinstance(siblings, list) else []:
        name = sibling.get("rfilename") if isinstance(sibling, dict) else None
        if not isinstance(name, str) or not name.lower().endswith(".gguf"):
            continue
        # Model info calls the LFS hash ``lfs.sha256`` (paths-info calls it ``lfs.oid``).
        size, sha256 = _size_and_sha256(sibling, hash_key="sha256")
        files.append(remote_file(name, size, sha256))
    return RepoListing(repo=repo, revision=revision, commit=commit, files=tuple(files),
                       gated=bool(info.get("gated", False)))


def list_gguf_files(repo: str, revision: str = "main", *, endpoint: str,
                    token: str | None) -> list[RemoteFile]:
    """Every GGUF file of a repo at a revision, names checked, with size, sha256 and quant."""
    return list(fetch_listing(repo, revision, endpoint=endpoint, token=token).files)


def resolve_revision(repo: str, revision: str, *, endpoint: str, token: str | None) -> str:
    return fetch_listing(repo, revision, endpoint=endpoint, token=token).commit


def paths_info(repo: str, commit: str, paths: list[str], *, endpoint: str,
               token: str | None) -> dict[str, RemoteFile]:
    """size and sha256 (``lfs.oid``) of named files at a commit; used by ``--locked``."""
    check_repo_id(repo)
    url = f"{endpoint.rstrip('/')}/api/models/{repo}/paths-info/{quote(commit, safe='')}"
    entries = _call(repo, commit, lambda client: client.post(
        url, data={"paths": paths}, headers=_auth(token)))
    found = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("type") != "file":
            continue  # a folder
        path = entry.get("path")
        if not isinstance(path, str):
            continue
        size, sha256 = _size_and_sha256(entry, hash_key="oid")
        found[path] = remote_file(path, size, sha256)
    return found


def _size_and_sha256(entry: dict[str, Any], *, hash_key: str) -> tuple[Any, Any]:
    lfs = entry.get("lfs")
    if isinstance(lfs, dict):
        return lfs.get("size", entry.get("size")), lfs.get(hash_key)
    return entry.get("size"), None


def _auth(token: str | None) -> dict[str, str]:
    # Only the token the caller chose: never a saved one it did not ask to send.
    return {"Authorization": f"Bearer {token}"} if token else {}


class _Retry(Exception):
    def __init__(self, error: HubError) -> None:
        self.error = error


def _call(repo: str, revision: str, request: Any, *, attempts: int = 4,
          sleep: Any = None) -> Any:
    """Call the hub, retrying 429/5xx and network errors with backoff; one sentence on failure.

    ``request(client)`` returns an ``httpx.Response``; the answer is its JSON body.
    """
    import time

    import httpx

    sleep = sleep or time.sleep
    timeout = httpx.Timeout(connect=15.0, read=60.0, write=30.0, pool=15.0)
    with httpx.Client(timeout=timeout, follow_redirects=True,
                      headers={"User-Agent": "hlctl"}) as client:
        for attempt in range(attempts):
            try:
                return _call_once(repo, revision, lambda: request(client))
            except _Retry as retry:
                if attempt == attempts - 1:
                    raise retry.error from None
                sleep(min(8.0, 0.5 * 2 ** attempt))
    raise AssertionError("unreachable")


def _call_once(repo: str, revision: str, send: Any) -> Any:
    import httpx

    try:
        response = send()
    except httpx.HTTPError as exc:  # transport errors: refused, reset, timed out
        raise _Retry(HubError(f"{repo}: cannot reach the hub: {type(exc).__name__}: {exc}")) \
            from None
    status = response.status_code
    if status < 400:
        try:
            return response.json()
        except ValueError:
            raise HubError(f"{repo}: the hub answered HTTP {status} with a body that is not "
                           "JSON") from None
    # The hub names the error in X-Error-Code, as huggingface_hub reads it.
    code = response.headers.get("X-Error-Code", "")
    if code == "GatedRepo":
        raise GatedRepoError(repo)
    if code == "RevisionNotFound":
        raise HubError(f"{repo} has no revision {revision!r}")
    if code == "RepoNotFound":
        raise HubError(f"{repo} was not found on the hub",
                       hint="check the name; a private repo needs HF_TOKEN")
    if status in (401, 403):
        raise GatedRepoError(repo)
    error = HubError(f"{repo}: the hub answered HTTP {status}")
    if status == 429 or status >= 500:
        raise _Retry(error)
    raise error
