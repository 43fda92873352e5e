"""The downloader in-process against the real local hub: redirects, resume edge cases, marks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from hlctl.models.download import DownloadError, DownloadSpec, RetryPolicy, download
from hlctl.models.hub import fetch_listing, resolve_url
from hlctl.models.localfile import NotEnoughSpace, check_space
from tests.fixtures.hub_server import Faults, HubServer

MiB = 1 << 20
NO_WAIT = RetryPolicy(sleep=lambda _: None)


@pytest.fixture
def hub() -> HubServer:
    with HubServer() as server:
        yield server  # type: ignore[misc]


def _spec(hub: HubServer, repo: str, path: str, dest: Path) -> DownloadSpec:
    listing = fetch_listing(repo, "main", endpoint=hub.url, token=None)
    (remote,) = [f for f in listing.files if f.path == path]
    assert remote.sha256 is not None
    return DownloadSpec(resolve_url(repo, listing.commit, path, hub.url), dest, remote.size,
                        remote.sha256)


def test_follows_the_hubs_redirect_and_resumes_through_it(hub: HubServer, tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download

    data = os.urandom(3 * MiB)
    repo = hub.repo("o/m", redirect_lfs=True)
    repo.add("m.gguf", data=data, faults=Faults(drop_at=MiB))
    spec = _spec(hub, "o/m", "m.gguf", tmp_path / "m.gguf")
    result = download(spec, retry=NO_WAIT)
    assert result.path.read_bytes() == data and result.downloaded == len(data)
    cdn = [r for r in hub.requests if r.path.startswith("/cdn/")]
    assert [r.range for r in cdn] == [None, f"bytes={MiB}-"]
    # huggingface_hub reads size and etag from the redirect itself, as from the real hub.
    got = hf_hub_download("o/m", "m.gguf", endpoint=hub.url, local_dir=tmp_path / "hf",
                          token=False)
    assert Path(got).read_bytes() == data


def test_server_ignoring_range_restarts_cleanly(hub: HubServer, tmp_path: Path) -> None:
    data = os.urandom(2 * MiB)
    hub.repo("o/m").add("m.gguf", data=data, faults=Faults(ignore_range=True))
    spec = _spec(hub, "o/m", "m.gguf", tmp_path / "m.gguf")
    spec.partial.write_bytes(data[:MiB])
    result = download(spec, retry=NO_WAIT)
    assert result.path.read_bytes() == data  # not the first MiB twice
    assert result.resumed_from == MiB


def test_partial_of_another_version_is_discarded(hub: HubServer, tmp_path: Path) -> None:
    data = os.urandom(2 * MiB)
    hub.repo("o/m").add("m.gguf", data=data)
    spec = _spec(hub, "o/m", "m.gguf", tmp_path / "m.gguf")
    spec.partial.write_bytes(b"\0" * MiB)
    try:
        os.setxattr(spec.partial, "user.hlctl.expect", b"f" * 64)
    except OSError:
        pytest.skip("this filesystem has no user xattrs")
    result = download(spec, retry=NO_WAIT)
    assert result.resumed_from == 0 and result.path.read_bytes() == data


def test_present_file_with_other_content_is_not_trusted(hub: HubServer, tmp_path: Path) -> None:
    data = os.urandom(MiB)
    hub.repo("o/m").add("m.gguf", data=data)
    spec = _spec(hub, "o/m", "m.gguf", tmp_path / "m.gguf")
    spec.dest.write_bytes(os.urandom(MiB))  # right size, no hlctl mark, wrong bytes
    with pytest.raises(DownloadError, match="exists but its sha256 is"):
        download(spec, retry=NO_WAIT)
    spec.dest.write_bytes(data)  # right bytes, no mark: rehashed once, then trusted
    assert download(spec, retry=NO_WAIT).skipped
    assert hub.resolve_requests() == []


def test_persistent_failure_gives_up_with_a_sentence(hub: HubServer, tmp_path: Path) -> None:
    data = os.urandom(MiB)
    hub.repo("o/m").add("m.gguf", data=data, faults=Faults(unavailable_times=100))
    spec = _spec(hub, "o/m", "m.gguf", tmp_path / "m.gguf")
    with pytest.raises(DownloadError, match="giving up after 6 failed tries"):
        download(spec, retry=NO_WAIT)
    assert not spec.dest.exists() and not spec.partial.exists()


def test_space_check(tmp_path: Path) -> None:
    check_space(tmp_path / "not" / "yet", 1)
    with pytest.raises(NotEnoughSpace, match="not enough disk space"):
        check_space(tmp_path, 1 << 60)


def test_progress_is_reported_to_the_end(hub: HubServer, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 5)
    hub.repo("o/m").add("m.gguf", data=data)
    spec = _spec(hub, "o/m", "m.gguf", tmp_path / "m.gguf")
    seen: list[tuple[int, int]] = []
    download(spec, progress=lambda done, total: seen.append((done, total)), retry=NO_WAIT)
    assert seen[-1] == (len(data), len(data))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert hashlib.sha256(spec.dest.read_bytes()).hexdigest() == spec.sha256


def test_hub_metadata_503_is_retried(hub: HubServer) -> None:
    from hlctl.models.hub import HubError

    repo = hub.repo("o/m", api_unavailable_times=2)
    repo.add("m-Q8_0.gguf", data=b"x" * 100)
    listing = fetch_listing("o/m", "main", endpoint=hub.url, token=None)
    assert [f.path for f in listing.files] == ["m-Q8_0.gguf"]
    repo.api_unavailable_times = 10
    with pytest.raises(HubError, match="the hub answered HTTP 503"):
        fetch_listing("o/m", "main", endpoint=hub.url, token=None)


def test_many_small_network_reads(hub: HubServer, tmp_path: Path) -> None:
    """A slow link hands over small reads; a block of thousands of them still writes whole."""
    from hlctl.models import download as module

    data = os.urandom(2 * MiB + 3)
    hub.repo("o/m").add("m.gguf", data=data)
    spec = _spec(hub, "o/m", "m.gguf", tmp_path / "m.gguf")
    original = module._Blocks.add

    def tiny(self: module._Blocks, chunk: bytes) -> list[bytes] | None:
        block = None
        for at in range(0, len(chunk), 512):  # as if the socket gave 512 bytes per read
            block = original(self, chunk[at:at + 512]) or block
        return block

    module._Blocks.add = tiny  # type: ignore[method-assign]
    try:
        download(spec, retry=NO_WAIT)
    finally:
        module._Blocks.add = original  # type: ignore[method-assign]
    assert spec.dest.read_bytes() == data
