"""The Docker image's start, without a Docker engine: the Dockerfile's own start command, run with
the Dockerfile's environment in a fresh virtual environment built from requirements.txt.

The Dockerfile is parsed (ENV, USER, WORKDIR, COPY, RUN, HEALTHCHECK, CMD), so the test follows
it exactly: the files its COPY lines take (less what .dockerignore leaves out) are staged in a
temporary home standing in for ``/home/user``, the virtual environment stands in for
``/opt/venv``, the ``RUN`` steps after ``USER`` (the build-time warm-up) run there, then ``CMD``
starts with ``ENV`` and a temporary folder standing in for ``/data`` (``FER_DB_URL`` points into
it). The app must answer ``GET /``, the health check and a ``predict`` call on a bundled example.
The ``RUN`` lines before ``USER`` must give ``/data`` to uid 1000, so that a volume mounted there
is writable by the app; :func:`annotate.engine.choose_default_db` must say when it is not.

The virtual environment (``python -m venv`` then ``pip install -r requirements.txt``: the serving
set, without PyTorch, as the image installs by default; about 1.2 GB) is kept under
``$FER_DOCKER_VENV_DIR`` (default ``<tmp>/fer_docker_venvs``), keyed by the hash of requirements.txt
and the Python version, so only the first run installs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

DOCKERFILE = REPO / "Dockerfile"
#: PATH of the python:3.11-slim base image, which the Dockerfile's ENV PATH extends.
BASE_IMAGE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EXAMPLE = REPO / "fer_core" / "assets" / "examples" / "astronaut.jpg"
START_TIMEOUT = 240.0


# ------------------------------------------------------------------------------ Dockerfile


@dataclass
class Dockerfile:
    base: str = ""
    env: dict[str, str] = field(default_factory=dict)  # ENV, in order, $VAR expanded
    user: str | None = None
    workdir: str = "/"
    copies: list[tuple[list[str], str]] = field(default_factory=list)  # after USER: (sources, destination)
    runs_as_user: list[str] = field(default_factory=list)  # RUN after USER
    runs_as_root: list[str] = field(default_factory=list)
    exposed: list[str] = field(default_factory=list)
    healthcheck: list[str] | None = None
    cmd: list[str] = field(default_factory=list)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comment lines dropped."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def _command(args: str) -> list[str]:
    """A CMD/HEALTHCHECK command: exec form (JSON) or shell form."""
    if args.startswith("["):
        return json.loads(args)
    return ["/bin/sh", "-c", args]


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    parsed = Dockerfile()
    scope = {"PATH": BASE_IMAGE_PATH}
    for keyword, args in _instructions(path.read_text()):
        if keyword == "FROM":
            parsed.base = args.split()[0]
        elif keyword == "ENV":
            tokens = shlex.split(args)
            pairs = [t.split("=", 1) for t in tokens] if "=" in tokens[0] else [[tokens[0], " ".join(tokens[1:])]]
            for key, value in pairs:
                scope[key] = parsed.env[key] = _expand(value, scope)
        elif keyword == "USER":
            parsed.user = args
        elif keyword == "WORKDIR":
            parsed.workdir = args
        elif keyword == "COPY" and parsed.user is not None:
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            destination = parts[-1] if parts[-1].startswith("/") else f"{parsed.workdir.rstrip('/')}/{parts[-1]}"
            parsed.copies.append((parts[:-1], destination))
        elif keyword == "RUN":
            (parsed.runs_as_user if parsed.user is not None else parsed.runs_as_root).append(args)
        elif keyword == "EXPOSE":
            parsed.exposed.extend(args.split())
        elif keyword == "HEALTHCHECK":
            parsed.healthcheck = _command(args.split(" CMD ", 1)[1].strip()) if " CMD " in f" {args}" else None
        elif keyword == "CMD":
            parsed.cmd = _command(args)
    return parsed


def _ignored(patterns: list[str]):
    """A predicate on context-relative paths, from .dockerignore patterns (``**``, ``*``, ``?``; no ``!``)."""
    regexes = []
    for pattern in patterns:
        body = re.escape(pattern.strip().strip("/"))
        body = body.replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regexes.append(re.compile(f"^{body}$"))

    def ignored(rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(r.match(p) for r in regexes for p in prefixes)

    return ignored


def dockerignore_patterns() -> list[str]:
    path = REPO / ".dockerignore"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def stage(docker: Dockerfile, mapping: dict[str, Path]) -> None:
    """Copy what the COPY lines take (less .dockerignore) to the mapped destinations."""
    ignored = _ignored(dockerignore_patterns())
    for sources, destination in docker.copies:
        target = _map_path(destination, mapping)
        into_folder = destination.endswith(("/", "/.")) or len(sources) > 1
        for source in sources:
            src = REPO / source
            assert src.exists(), f"COPY source {source} is missing"
            if src.is_file():
                pairs = [(src, target / src.name if into_folder else target)]
            else:  # a folder's contents go into the destination folder
                pairs = [(f, target / f.relative_to(src)) for f in sorted(src.rglob("*")) if f.is_file()]
            for file, dest in pairs:
                if ignored(file.relative_to(REPO).as_posix()):
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, dest)


def _map_path(value: str, mapping: dict[str, Path]) -> Path:
    for image_path, local in mapping.items():
        if value == image_path or value.startswith(image_path.rstrip("/") + "/"):
            return local / value[len(image_path):].lstrip("/")
    raise AssertionError(f"no stand-in for image path {value}")


def _translate(value: str, mapping: dict[str, Path]) -> str:
    """An ENV value with the image's paths replaced by their stand-ins (PATH lists included)."""
    for image_path, local in sorted(mapping.items(), key=lambda kv: -len(kv[0])):
        value = re.sub(rf"(?<![\w/]){re.escape(image_path)}(?=/|:|$)", str(local), value)
    return value


# ------------------------------------------------------------------------------ the virtual environment


def fresh_venv() -> Path:
    """A virtual environment with requirements.txt installed, built once per requirements hash."""
    python = sys.executable if sys.version_info[:2] == (3, 11) else shutil.which("python3.11")
    if python is None:
        pytest.skip("the image runs Python 3.11; no python3.11 here")
    requirements = (REPO / "requirements.txt").read_bytes()
    digest = hashlib.sha256(requirements + sys.version.encode()).hexdigest()[:16]
    root = Path(os.environ.get("FER_DOCKER_VENV_DIR") or Path(tempfile.gettempdir()) / "fer_docker_venvs")
    root.mkdir(parents=True, exist_ok=True)
    venv = root / digest
    done = venv / ".requirements-installed"
    with open(root / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time
        if not done.is_file():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                            "--disable-pip-version-check",
                            "-r", str(REPO / "requirements.txt")], check=True, timeout=3600)
            done.write_bytes(requirements)
    return venv


# ------------------------------------------------------------------------------ tests


def test_dockerfile_is_a_space_image() -> None:
    docker = parse_dockerfile()
    assert docker.base == "python:3.11-slim"
    assert docker.env["GRADIO_SERVER_NAME"] == "0.0.0.0" and docker.env["GRADIO_SERVER_PORT"] == "7860"
    assert "7860" in docker.exposed
    assert any(re.search(r"useradd\b.*--uid 1000\b", run) for run in docker.runs_as_root), "a user with uid 1000"
    assert docker.user == "user"
    assert docker.cmd == ["python", "app.py"]
    assert docker.healthcheck is not None and "http://127.0.0.1:7860/" in " ".join(docker.healthcheck)
    copied = {source for sources, _ in docker.copies for source in sources}
    assert copied == {"app.py", "fer_core", "annotate", "ui"}
    ignored = _ignored(dockerignore_patterns())
    for rel in ("tests/test_app.py", "runs/x/model.safetensors", ".venv/bin/python", "fer_core/__pycache__/a.pyc",
                ".git/HEAD", "artifacts/screenshots/a.png", "fer_annotations.db", "ui/x.db-wal", ".pytest_cache/v"):
        assert ignored(rel), rel
    for rel in ("app.py", "fer_core/assets/fer_model.safetensors", "fer_core/assets/fer_model.int8.onnx",
                "annotate/migrations/env.py", "ui/relabel_tab.py", "requirements.txt", "requirements-train.txt"):
        assert not ignored(rel), rel
    # The README carries the Space's front matter at its very top.
    readme = (REPO / "README.md").read_text()
    assert readme.startswith("---\n")
    front = readme.split("---\n")[1]
    assert "sdk: docker" in front and "app_port: 7860" in front


def _shell_commands(run: str) -> list[list[str]]:
    """The simple commands of a RUN line (split at ``&&``, ``;`` and ``||``), each as its words."""
    words = shlex.split(run, posix=True)
    commands, current = [], []
    for word in words:
        if word in ("&&", ";", "||"):
            commands.append(current)
            current = []
        else:
            current.append(word.rstrip(";"))
    return [c for c in [*commands, current] if c]


def _owner_of(path: str, runs: list[str]) -> str | None:
    """The owner that the RUN lines give ``path`` (``chown`` after ``mkdir``), None if they never create it."""
    created, owner = False, None
    for run in runs:
        for command in _shell_commands(run):
            args = [a for a in command[1:] if not a.startswith("-")]
            if command[0] == "mkdir" and path in args:
                created = True
            elif command[0] == "chown" and len(args) >= 2 and path in args[1:] and created:
                owner = args[0]
    return owner if created else None


def test_the_image_makes_data_writable_for_the_app() -> None:
    """``/data`` is created as root and given to uid 1000 before ``USER``: a named volume mounted
    there (``docker run -v fer-data:/data``) starts with that owner, so the app can write it."""
    from annotate.engine import DATA_DIR

    docker = parse_dockerfile()
    assert str(DATA_DIR) == "/data"
    owner = _owner_of("/data", docker.runs_as_root)
    assert owner is not None, "no RUN line before USER creates /data (mkdir -p /data)"
    user, _, group = owner.partition(":")
    assert user in ("1000", "user") and group in ("", "1000", "user"), f"/data is owned by {owner}, not uid 1000"
    assert any(re.search(r"useradd\b.*--uid 1000\s+user\b", run) for run in docker.runs_as_root)
    assert _owner_of("/data", ["mkdir -p /data"]) is None  # the parser sees a missing chown
    assert _owner_of("/data", ["mkdir -p /data && chown -R 1000:1000 /data"]) == "1000:1000"


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Path:
    """A folder that exists and refuses new files, for this process too (root ignores permission
    bits: then /proc, where nobody can create a file although os.access says root may)."""
    folder = tmp_path / "data"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except OSError:
        return folder
    (folder / "probe").unlink()
    folder.chmod(0o755)
    return Path("/proc")


def test_default_db_prefers_writable_data(tmp_path: Path) -> None:
    from annotate.engine import DB_FILENAME, choose_default_db, default_db_url

    data, cwd = tmp_path / "data", tmp_path / "app"
    data.mkdir()
    cwd.mkdir()
    choice = choose_default_db({}, data_dir=data, cwd=cwd)
    assert choice.url == f"sqlite:///{data / DB_FILENAME}" == default_db_url({}, data_dir=data, cwd=cwd)
    assert choice.reason == f"using {data / DB_FILENAME} (persistent storage)"
    assert choice.warning is None
    assert list(data.iterdir()) == []  # the write check leaves nothing behind

    absent = choose_default_db({}, data_dir=tmp_path / "absent", cwd=cwd)
    assert absent.url == f"sqlite:///{cwd / DB_FILENAME}"
    assert absent.reason == f"using {cwd / DB_FILENAME}" and absent.warning is None

    from_env = choose_default_db({"FER_DB_URL": "postgresql://u:s3cret@host/db"}, data_dir=data, cwd=cwd)
    assert from_env.url == "postgresql://u:s3cret@host/db"
    assert from_env.reason == "using postgresql://u:***@host/db from FER_DB_URL" and from_env.warning is None


def test_unwritable_data_is_reported_not_silently_replaced(tmp_path: Path, unwritable_dir: Path) -> None:
    from annotate.engine import DB_FILENAME, choose_default_db, default_db_url

    cwd = tmp_path / "app"
    cwd.mkdir()
    choice = choose_default_db({}, data_dir=unwritable_dir, cwd=cwd)
    assert choice.url == f"sqlite:///{cwd / DB_FILENAME}" == default_db_url({}, data_dir=unwritable_dir, cwd=cwd)
    assert choice.reason == f"using {cwd / DB_FILENAME}"
    warning = choice.warning
    assert warning is not None
    assert str(unwritable_dir) in warning and str(cwd / DB_FILENAME) in warning and "lost" in warning
    assert f"uid {os.geteuid()}" in warning and f"chown {os.geteuid()}" in warning
    assert f"-v fer-data:{unwritable_dir}" in warning and "FER_DB_URL" in warning
    # FER_DB_URL chooses on purpose: no warning about the folder then.
    assert choose_default_db({"FER_DB_URL": str(cwd / "x.db")}, data_dir=unwritable_dir).warning is None


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def _get(url: str, timeout: float = 5) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read().decode("utf-8", "replace")


def _first_answer(process: subprocess.Popen, url: str, log: Path, *, deadline: float) -> tuple[int, str]:
    """The app's answer to ``GET url/`` once it serves; fails the test if it exits or misses ``deadline``."""
    while True:
        if process.poll() is not None:
            pytest.fail(f"the app exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            return _get(f"{url}/")
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"no answer within {START_TIMEOUT:.0f} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)


def test_the_images_start_command_serves_the_app(tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    docker = parse_dockerfile()
    venv = fresh_venv()
    # The image serves without PyTorch (requirements.txt; WITH_TRAINING=1 adds it).
    assert subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True).returncode != 0
    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    data.mkdir()
    mapping = {docker.env.get("VIRTUAL_ENV", "/opt/venv"): venv, docker.env.get("HOME", "/home/user"): home}
    stage(docker, mapping)
    workdir = _map_path(docker.workdir, mapping)
    assert (workdir / "app.py").is_file() and not (workdir / "tests").exists()
    assert not list(workdir.rglob("__pycache__")) and not list(workdir.rglob("*.db"))

    port = int(docker.env["GRADIO_SERVER_PORT"])
    if not _port_free(port):
        from conftest import free_port

        port = free_port()
    env = {key: _translate(value, mapping) for key, value in docker.env.items()}
    env.update({
        "GRADIO_SERVER_PORT": str(port),
        "FER_DB_URL": f"sqlite:///{data / 'fer_annotations.db'}",  # the image's /data
        "LANG": "C.UTF-8",
        "TMPDIR": str(tmp_path),
        "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),
    })
    # Host paths for what the base image would provide (the shell, python's own libraries).
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if not p.startswith("/usr/local")) or os.defpath
    assert env["PATH"].startswith(str(venv / "bin"))
    assert shutil.which("python", path=env["PATH"]) == str(venv / "bin" / "python")

    for run in docker.runs_as_user:  # the build-time warm-up
        result = subprocess.run(["/bin/sh", "-c", run], check=False, cwd=workdir, env=env, capture_output=True,
                                text=True,
                                timeout=600)
        assert result.returncode == 0, f"RUN {run} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

    log = (tmp_path / "app.log").open("w")
    started = time.monotonic()
    process = subprocess.Popen(docker.cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        status, body = _first_answer(process, url, tmp_path / "app.log", deadline=started + START_TIMEOUT)
        first_answer = time.monotonic() - started
        assert status == 200 and "gradio" in body.lower()

        # The health check, as Docker would run it (with this test's port).
        check = [part.replace(":7860/", f":{port}/") for part in docker.healthcheck]
        assert subprocess.run(check, check=False, cwd=workdir, env=env, timeout=30).returncode == 0

        result = Client(url, verbose=False).predict(handle_file(str(EXAMPLE)), api_name="/predict")
        assert len(result["faces"]) == 1 and result["faces"][0]["label"]
        print(f"\nstart command {docker.cmd}: GET / answered {first_answer:.1f} s after the start, "
              f"predict at {time.monotonic() - started:.1f} s")
        assert (data / "fer_annotations.db").is_file(), "the relabel store is not where /data stands"
        assert not (workdir / "fer_annotations.db").exists()
        # The log says which database holds the answers, and raises no alarm about it.
        started_log = (tmp_path / "app.log").read_text()
        said = re.search(r"^relabel store: using (.+)$", started_log, re.MULTILINE)
        assert said is not None, f"the log does not say which database is used:\n{started_log[-4000:]}"
        assert str(data / "fer_annotations.db") in said.group(1)
        assert not re.search(r"^WARNING:.*relabel", started_log, re.MULTILINE)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
