"""Settings read from the environment, in this one place; other modules take plain arguments."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings", "parse_auth", "PACKAGE_DIR", "ASSETS_DIR", "SAMPLE_PATH", "EXAMPLES_DIR", "default_cache_dir"]

PACKAGE_DIR: Path = Path(__file__).resolve().parent
#: Files shipped in the repository: bundled weights, the sample of real faces.
ASSETS_DIR: Path = PACKAGE_DIR / "assets"
#: A few hundred real FER2013 training faces with their quality fields (enhanced schema).
SAMPLE_PATH: Path = ASSETS_DIR / "fer2013_sample.parquet"
#: Example photos of real faces for the Predict tab (made by tools/make_examples.py).
EXAMPLES_DIR: Path = ASSETS_DIR / "examples"


def default_cache_dir() -> Path:
    """The cache folder: ``$FER_CACHE_DIR``, else ``$XDG_CACHE_HOME/fer_tool``, else ``~/.cache/fer_tool``."""
    if os.environ.get("FER_CACHE_DIR"):
        return Path(os.environ["FER_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fer_tool"


@dataclass(frozen=True)
class Settings:
    """What a deployment may set: the data set, the weights, the database, the server, sign-in.

    The cache folder is not here: :func:`default_cache_dir` is its one reader (``$FER_CACHE_DIR``),
    called where the cache is used, so that library users get the same folder as the app.
    """

    data: str | None = None
    #: A ``.safetensors`` file with its ``.json`` card beside it (``$FER_WEIGHTS``); None: the bundled weights.
    weights: str | None = None
    db_url: str | None = None
    server_name: str = "127.0.0.1"
    server_port: int = 7860
    #: ``USER:PASS`` pairs, comma-separated, that may sign in (``$FER_AUTH``); None: open to all.
    auth: str | None = None
    #: Running on a Hugging Face Space with ``hf_oauth: true`` (Spaces set ``OAUTH_CLIENT_ID``).
    hf_oauth: bool = False

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """The settings from ``environ`` (default ``os.environ``); a bad port raises ValueError."""
        env = os.environ if environ is None else environ
        port_text = env.get("GRADIO_SERVER_PORT", "7860")
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"GRADIO_SERVER_PORT must be a port number, got {port_text!r}") from None
        return cls(
            data=env.get("FER_DATA") or None,
            weights=env.get("FER_WEIGHTS") or None,
            db_url=env.get("FER_DB_URL") or None,
            server_name=env.get("GRADIO_SERVER_NAME", "127.0.0.1") or "127.0.0.1",
            server_port=port,
            auth=env.get("FER_AUTH") or None,
            hf_oauth=bool(env.get("SPACE_ID") and env.get("OAUTH_CLIENT_ID")),
        )


def parse_auth(text: str | None) -> list[tuple[str, str]]:
    """``"ann:secret,bob:pw"`` as ``[("ann", "secret"), ("bob", "pw")]``; empty or None: no sign-in.

    Raises
    ------
    ValueError
        A pair without ``:``, or with an empty user or password.
    """
    pairs = []
    for item in (text or "").split(","):
        if not item.strip():
            continue
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError("sign-in must be given as USER:PASS (several separated by commas), "
                             "with a non-empty user and password")
        pairs.append((user, password))
    return pairs
