"""`hlctl models fit`: will a GGUF model fit the GPU? Reads only the header (local or hub)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from hlctl.context import AppContext
from hlctl.errors import UsageError

GIB = 1 << 30


@dataclass
class _Model:
    label: str  # what the user named, resolved: path or repo/file@commit
    header: Any  # GgufHeader
    candidates: list[Any]  # fit.Candidate: other quants of the same model
    bytes_read: int | None  # remote header bytes fetched


def _local_model(path: Path) -> _Model:
    from hlctl.models.gguf import read_model_header

    return _Model(label=str(path), header=read_model_header(path), candidates=[],
                  bytes_read=None)


def _remote_model(repo: str, *, revision: str, quant: str | None, file: str | None,
                  environ: Any) -> _Model:
    from hlctl.models import hub
    from hlctl.models.fit import Candidate
    from hlctl.models.gguf import read_remote_header

    endpoint = hub.default_endpoint(environ)
    token = hub.default_token(environ)
    listing = hub.fetch_listing(repo, revision, endpoint=endpoint, token=token)
    models = listing.models
    model = hub.select_model(models, file=file, quant=quant, repo=repo)
    urls = [hub.resolve_url(repo, listing.commit, f.path, endpoint) for f in model.files]
    header, fetched = read_remote_header(urls, token=token)
    # Every quant of a repo shares the architecture; the listing's sizes stand in for the
    # weights of the others (less the header, which is about the same for all of them).
    candidates = [Candidate(name=m.quant or m.name, weights_bytes=max(m.size - header.data_offset,
                                                                        0))
                  for m in models if m.complete and not Path(m.name).name.startswith("mmproj")]
    return _Model(label=f"{repo}/{model.name}@{listing.commit[:12]}", header=header,
                  candidates=candidates, bytes_read=fetched)


def _gpu_vram(app: AppContext) -> int:
    from hlctl.gpu.nvml import read_snapshot

    snapshot = read_snapshot(kernel_log=False)
    if snapshot.error or not snapshot.gpus:
        reason = snapshot.error or "NVML sees no GPU"
        raise UsageError(f"--gpu auto cannot read GPU 0: {reason}",
                         hint="give the card's memory with --vram GIB")
    total = snapshot.gpus[0].memory_total_bytes
    if not total:
        raise UsageError("--gpu auto: GPU 0 reports no memory size",
                         hint="give the card's memory with --vram GIB")
    return int(total)


def _is_local(model: str) -> bool:
    path = Path(model)
    return path.exists() or model.lower().endswith(".gguf") or model.startswith((".", "/", "~"))


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / (1 << 20):,.0f} MiB"


def _verdict(est: Any, best: Any, had_candidates: bool) -> str:
    gib = est.vram_bytes / GIB
    if est.fits == "full":
        text = (f"Fits fully: {_mib(est.total_vram_bytes)} of {gib:.1f} GiB VRAM at context "
                f"{est.ctx} (-ngl {est.gpu_layers}).")
    elif est.fits == "partial":
        ram = "" if est.ram_ok is None else (" and the host has the RAM for the rest"
                                             if est.ram_ok else "")
        text = (f"Fits partly: run with -ngl {est.gpu_layers} of {est.n_layers} layers on the "
                f"GPU, the rest in RAM ({_mib(est.ram_needed_bytes)}){ram}.")
    else:
        text = (f"Does not fit: a full offload needs {_mib(est.full_vram_bytes)} and "
                f"{gib:.1f} GiB VRAM does not hold even one layer with its buffers.")
        ram_notes = [n for n in est.notes if "RAM" in n]
        if ram_notes:
            text = f"Does not fit: {ram_notes[0]}."
    if best is not None and est.fits != "full":
        text += f" The largest quant that fits fully is {best.name}."
    elif had_candidates and est.fits != "full":
        text += " No quant of this model fits fully at this context."
    return text


@click.command()
@click.argument("model", metavar="REPO|PATH")
@click.option("--quant", help="Quant to check in a hub repo, e.g. Q4_K_M.")
@click.option("--file", "file_", help="File (or split model name) in a hub repo.")
@click.option("--revision", default="main", show_default=True, help="Hub branch, tag or commit.")
@click.option("--ctx", type=click.IntRange(min=0), default=8192, show_default=True,
              help="Context size (-c); 0 = the model's training context.")
@click.option("--cache-type", type=click.Choice(["f16", "q8_0", "q4_0"]), default="f16",
              show_default=True, help="KV cache type (-ctk/-ctv).")
@click.option("--vram", type=click.FloatRange(min=0, min_open=True), metavar="GIB",
              help="GPU memory in GiB.")
@click.option("--gpu", type=click.Choice(["auto"]), help="Read GPU 0's memory through NVML.")
@click.option("--ram", type=click.FloatRange(min=0, min_open=True), metavar="GIB",
              help="Host RAM in GiB for a partial offload (default with --gpu auto: this host's).")
@click.option("--parallel", type=click.IntRange(min=1), default=None,
              help="Server slots (-np); default: llama-server's 4 slots with unified KV.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_obj
def fit(app: AppContext, model: str, quant: str | None, file_: str | None, revision: str,
        ctx: int, cache_type: str, vram: float | None, gpu: str | None, ram: float | None,
        parallel: int | None, as_json: bool) -> None:
    """Estimate VRAM for a GGUF model from its header alone (range requests for hub repos).

    \b
    Examples:
      hlctl models fit bartowski/Mistral-7B-Instruct-v0.3-GGUF --quant Q4_K_M --vram 24
      hlctl models fit ./gemma-3-270m-q4_k_m.gguf --ctx 32768 --gpu auto --json

    Exit status 1 when the model does not fit at all.
    """
    from hlctl.cli.output import console, print_json
    from hlctl.models.fit import estimate_fit, largest_fitting, model_shape

    if (vram is None) == (gpu is None):
        raise UsageError("give the GPU memory with --vram GIB, or --gpu auto to read it")
    vram_bytes = _gpu_vram(app) if gpu == "auto" else int(vram * GIB)  # type: ignore[operator]
    from hlctl.models.localfile import host_ram_bytes

    ram_bytes = (int(ram * GIB) if ram is not None
                 else host_ram_bytes() if gpu == "auto" else None)

    if _is_local(model):
        if quant or file_:
            raise UsageError("--quant and --file choose a file in a hub repo, not a local path")
        path = Path(model).expanduser()
        if not path.exists():
            raise UsageError(f"{path} does not exist")
        chosen = _local_model(path)
    else:
        chosen = _remote_model(model, revision=revision, quant=quant, file=file_,
                               environ=app.environ)

    shape = model_shape(chosen.header)
    options: dict[str, Any] = {"cache_type": cache_type, "parallel": parallel,
                               "ram_bytes": ram_bytes}
    estimate = estimate_fit(shape, ctx, vram_bytes, **options)
    best = largest_fitting(shape, chosen.candidates, ctx, vram_bytes, **options) \
        if chosen.candidates else None

    if as_json:
        out = {"model": chosen.label, **estimate.to_json(),
               "architecture": shape.arch,
               "largest_fitting_quant": None if best is None else best.name,
               "header_bytes_read": chosen.bytes_read}
        print_json(out)
        if estimate.fits == "no":
            raise click.exceptions.Exit(1)
        return

    from rich.table import Table

    title = Path(chosen.label).name if chosen.bytes_read is None else chosen.label
    table = Table(title=f"{title} ({shape.arch}, {shape.n_block} blocks)")
    table.add_column("")
    table.add_column("GPU", justify="right")
    table.add_column("", style="dim")
    kv_note = (f"ctx {estimate.ctx}, {cache_type}, {estimate.parallel} slot(s)"
               f"{', unified' if estimate.kv_unified else ''}")
    on_gpu = (f"{estimate.gpu_layers}/{estimate.n_layers} layers" if estimate.fits != "no"
              else "full offload")
    table.add_row("Weights", _mib(estimate.weights_bytes),
                  f"{on_gpu} of {_mib(estimate.model_bytes)}")
    table.add_row("KV cache", _mib(estimate.kv_cache_bytes), kv_note)
    table.add_row("Compute buffer", _mib(estimate.compute_bytes), "worst-case micro-batch")
    table.add_row("CUDA overhead", _mib(estimate.overhead_bytes), "context, cuBLAS (fixed)")
    table.add_row("Total", _mib(estimate.total_vram_bytes),
                  f"of {estimate.vram_bytes / GIB:.1f} GiB VRAM")
    if estimate.fits == "partial" or estimate.ram_bytes is not None:
        table.add_row("Host RAM", _mib(estimate.ram_needed_bytes),
                      "" if estimate.ram_bytes is None else f"of {_mib(estimate.ram_bytes)}")
    out_console = console()
    out_console.print(table)
    for note in estimate.notes:
        out_console.print(f"note: {note}")
    out_console.print(_verdict(estimate, best, bool(chosen.candidates)))
    if estimate.fits == "no":
        raise click.exceptions.Exit(1)

