"""Every command the README and docs/*.md document runs as written: ``<module> --help`` exits 0 with a usage line.

The commands are collected from the text (prose and code blocks alike): every ``python -m MODULE``,
``torchrun ... -m MODULE``, ``python app.py`` and ``python tools/X.py``, one test per module, so a
renamed or removed command fails under its own name. Modules that are not the project's
(``python -m venv``) and placeholders (``python -m benchmarks.X``) are left out.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

#: ``python -m MODULE``, ``torchrun [options] -m MODULE`` (also across a line break or a backslash
#: continuation), ``python app.py`` and ``python tools/X.py`` / ``python benchmarks/X.py``.
COMMAND = re.compile(r"""python3?\s+-m\s+(?P<module>[A-Za-z_][\w.]*[\w])
                       | torchrun\b[^`]{0,300}?\s-m\s+(?P<torchrun>[A-Za-z_][\w.]*[\w])
                       | python3?\s+(?P<script>(?:(?:tools|benchmarks)/)?\w+\.py)\b""", re.VERBOSE)
#: Modules of other projects that the docs name in passing (a virtual environment, the test runner).
NOT_OURS = frozenset({"venv", "pip", "pytest"})
#: Commands every copy of the docs must keep (the design notes' commands measured from outside, and
#: the ones the annotation workflow depends on).
MUST_BE_DOCUMENTED = ("fer_core.train", "fer_core.evaluate", "fer_core.quality", "annotate.import_votes",
                      "annotate.simulate", "benchmarks.store")
#: Seconds one ``--help`` may take (a cold start with heavy imports takes a few).
HELP_TIMEOUT = 60


def documented_commands(paths: list[Path] = DOCS) -> dict[str, list[str]]:
    """Each documented module (``app.py`` for the app) and the files that document it, sorted by module."""
    found: dict[str, set[str]] = {}
    for path in paths:
        for match in COMMAND.finditer(path.read_text(encoding="utf-8")):
            name = match["module"] or match["torchrun"] or match["script"]
            if name.endswith(".py") and name != "app.py":  # tools/x.py runs as tools.x
                name = name.removesuffix(".py").replace("/", ".")
            if name in NOT_OURS or re.fullmatch(r"[A-Z]", name.rsplit(".", 1)[-1]):  # benchmarks.X
                continue
            found.setdefault(name, set()).add(path.name)
    return {name: sorted(files) for name, files in sorted(found.items())}


COMMANDS = documented_commands()


def _help(name: str) -> subprocess.CompletedProcess[str]:
    target = [name] if name == "app.py" else ["-m", name]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    try:
        return subprocess.run([sys.executable, *target, "--help"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=HELP_TIMEOUT)
    except subprocess.TimeoutExpired as err:
        return subprocess.CompletedProcess(err.cmd, returncode=-1, stdout="",
                                           stderr=f"no answer within {HELP_TIMEOUT} s")


@pytest.fixture(scope="module")
def helps() -> dict[str, subprocess.CompletedProcess[str]]:
    """``--help`` of every documented command, run side by side (each start imports a few seconds' worth)."""
    with ThreadPoolExecutor(max_workers=max(2, min(6, os.cpu_count() or 1))) as pool:
        return dict(zip(COMMANDS, pool.map(_help, COMMANDS)))


class TestDocumentedCommands:
    def test_the_docs_document_the_commands_that_matter(self) -> None:
        assert COMMANDS, "no command found in README.md and docs/*.md"
        missing = [name for name in MUST_BE_DOCUMENTED if name not in COMMANDS]
        assert not missing, f"README.md and docs/*.md no longer name {missing}"
        assert "app.py" in COMMANDS

    @pytest.mark.slow
    @pytest.mark.parametrize("name", list(COMMANDS))
    def test_runs_as_written(self, name: str, helps: dict[str, subprocess.CompletedProcess[str]]) -> None:
        result = helps[name]
        where = ", ".join(COMMANDS[name])
        assert result.returncode == 0, (f"`{name} --help`, documented in {where}, exited {result.returncode}:\n"
                                        f"{result.stderr[-2000:]}")
        assert re.search(r"^usage: ", result.stdout, re.MULTILINE), f"`{name} --help` printed no usage line"


class TestCollection:
    def test_every_form_of_command_is_found(self, tmp_path: Path) -> None:
        doc = tmp_path / "doc.md"
        doc.write_text("Run `python -m fer_core.quality DATA --out FILE`, or\n"
                       "```bash\ntorchrun --standalone --nproc-per-node 2 \\\n    -m fer_core.train DATA --out DIR\n"
                       "python app.py --data x\npython tools/make_sample.py y\n"
                       "python3 -m\nbenchmarks.store --db z\n```\n"
                       "Each harness is `python -m benchmarks.X`; make one with `python -m venv .venv`.\n")
        assert documented_commands([doc]) == {name: ["doc.md"] for name in sorted(
            ["fer_core.quality", "fer_core.train", "app.py", "tools.make_sample", "benchmarks.store"])}

    def test_a_sentence_ending_after_the_module_is_not_part_of_its_name(self, tmp_path: Path) -> None:
        doc = tmp_path / "doc.md"
        doc.write_text("The store check is python -m benchmarks.store.\n")
        assert list(documented_commands([doc])) == ["benchmarks.store"]
