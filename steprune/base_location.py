"""Where the built-in world's base model lives, and whether a directory there is a sound saved model.

    from steprune.base_location import default_base_dir, require_base, resolve_pretrained
    path = require_base()          # artifacts/base (STEPRUNE_HOME overrides artifacts/), checked
    resolve_pretrained("./no/such/dir")   # FileNotFoundError: a path that is not there never goes to the Hub

A fresh clone ships the base in artifacts/base; `make base ARGS=--force` (`steprune.recipes.build_base`)
rebuilds it. Kept apart from the recipe so that `steprune.eval` can find the base without importing a recipe.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def artifacts_root() -> Path:
    return Path(os.environ.get("STEPRUNE_HOME", "artifacts"))


def default_base_dir() -> Path:
    return artifacts_root() / "base"


class BaseModelError(RuntimeError):
    """The base model directory exists but cannot be used."""


def missing_base_message(path: Path) -> str:
    return (
        f"no base model at {path}: a clone ships it in artifacts/base; rebuild it with `make base ARGS=--force` "
        "(base v2: about 80 minutes on 2 free cores; `--recipe quick`: 18-19 minutes, a weaker 3-layer base)"
    )


def require_base(path: str | Path | None = None) -> Path:
    """The base directory, checked; a missing one says to run `make base`, a corrupt one says why."""
    path = Path(path) if path is not None else default_base_dir()
    if not path.exists():
        raise FileNotFoundError(missing_base_message(path))
    check_base(path)
    return path


HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")  # `name` or `owner/name`
FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".ckpt", ".pt", ".pth", ".yaml", ".yml")


def looks_like_path(name_or_path: str) -> bool:
    """True when `name_or_path` can only mean a local path (never a Hugging Face Hub repo id)."""
    text = str(name_or_path)
    if text.startswith(("/", "./", "../", "~", ".\\")) or text in (".", "..") or "\\" in text:
        return True
    if not HUB_ID.match(text) or ".." in text or "--" in text or text.endswith(FILE_SUFFIXES):
        return True
    first = text.split("/", 1)[0]
    return "/" in text and Path(first).is_dir()  # `artifacts/nope` beside an `artifacts/` directory


def resolve_pretrained(name_or_path: str | os.PathLike[str]) -> str:
    """What `from_pretrained` should be given: an existing local directory, or a Hub id.

    A path-like argument that does not exist raises FileNotFoundError here, instead of being looked up on the
    Hub as a repo of that name (`artifacts/base` is a valid repo id); the built-in world's base says `make base`.
    """
    text = os.fspath(name_or_path)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"expected a model directory or a Hugging Face Hub id, got {name_or_path!r}")
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise NotADirectoryError(
            f"{path} is a file: pass the directory a model was saved to with save_pretrained (config.json, "
            "weights, processor files), or a Hugging Face Hub id such as llava-hf/llava-1.5-7b-hf"
        )
    if path.absolute() == default_base_dir().absolute():
        raise FileNotFoundError(missing_base_message(path))
    if looks_like_path(text):
        raise FileNotFoundError(
            f"no model directory at {path} ({path.absolute()}): it is a local path, so it was not looked up on "
            "the Hugging Face Hub; check the path, or pass a Hub id of the form owner/name"
        )
    return text


def check_base(path: Path) -> None:
    """Raise BaseModelError naming the problem unless `path` holds a loadable saved model + processor."""
    from safetensors import safe_open

    for name in ("config.json", "build_info.json", "tokenizer.json"):
        if not (path / name).is_file():
            raise BaseModelError(
                f"base model at {path} is incomplete: {name} is missing (rebuild with `make base ARGS=--force`)"
            )
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise BaseModelError(
            f"base model at {path} has no .safetensors weights (rebuild with `make base ARGS=--force`)"
        )
    for file in weights:
        try:
            with safe_open(str(file), "pt") as handle:
                keys = list(handle.keys())
                handle.get_slice(keys[-1])[:1]  # reads the header and touches the end of the data
        except Exception as error:  # noqa: BLE001 - any failure here means the file is unusable
            raise BaseModelError(
                f"base model weights {file} are corrupt ({error}); rebuild with `make base ARGS=--force`"
            ) from error
        if file.stat().st_size < 1024:
            raise BaseModelError(f"base model weights {file} are truncated; rebuild with `make base ARGS=--force`")


def weights_digest(path: Path) -> dict[str, str]:
    """SHA-256 of every safetensors file of a saved model at `path` (recorded in build_info.json, checked by tests)."""
    import hashlib

    digests = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        digests[file.name] = digest.hexdigest()
    return digests
