"""The root CLI: light `--help`, lazy groups, one-line errors with the right exit codes."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from hlctl.cli.main import LAZY_COMMANDS, cli

HEAVY = ("pynvml", "docker", "ansible", "huggingface_hub", "httpx", "pydantic", "rich",
         "yaml", "gguf", "prometheus_client", "aiohttp", "numpy")


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "from hlctl.cli.main import cli\n"
        "try:\n    cli.main(['--help'], prog_name='hlctl')\nexcept SystemExit:\n    pass\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert "HEAVY []" in result.stderr, result.stderr
    for name in LAZY_COMMANDS:
        assert name in result.stdout


def test_every_lazy_command_imports_and_has_help() -> None:
    runner = CliRunner()
    for name in LAZY_COMMANDS:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage:" in result.output


def test_unknown_command_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["frobnicate"])
    assert result.exit_code == 2
    assert "No such command" in result.output


def test_internal_errors_are_one_line_without_debug(monkeypatch) -> None:
    def boom() -> None:
        raise RuntimeError("kaput")

    monkeypatch.setattr("hlctl.config.LabConfig.model_json_schema", boom)
    result = CliRunner().invoke(cli, ["config", "schema"], env={"HLCTL_DEBUG": ""})
    assert result.exit_code == 1
    assert result.stderr.strip() == ("error: internal error: RuntimeError: kaput "
                                     "(set HLCTL_DEBUG=1 for the traceback)")
