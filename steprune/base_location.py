"""Where the built-in world's base model lives, and whether a directory there is a sound saved model.

    from steprune.base_location import default_base_dir, require_base
    path = require_base()          # artifacts/base (STEPRUNE_HOME overrides artifacts/), checked

A fresh clone ships the base in artifacts/base; `make base ARGS=--force` (`steprune.recipes.build_base`)
rebuilds it. Kept apart from the recipe so that `steprune.eval` can find the base without importing a recipe.
"""

from __future__ import annotations

import os
from pathlib import Path


def artifacts_root() -> Path:
    return Path(os.environ.get("STEPRUNE_HOME", "artifacts"))


def default_base_dir() -> Path:
    return artifacts_root() / "base"


class BaseModelError(RuntimeError):
    """The base model directory exists but cannot be used."""


def require_base(path: str | Path | None = None) -> Path:
    """The base directory, checked; a missing one says to run `make base`, a corrupt one says why."""
    path = Path(path) if path is not None else default_base_dir()
    if not path.exists():
        raise FileNotFoundError(
            f"no base model at {path}: a clone ships it in artifacts/base; rebuild it with `make base ARGS=--force` "
            "(base v2: about 80 minutes on 2 free cores; `--recipe quick`: 18-19 minutes, a weaker 3-layer base)"
        )
    check_base(path)
    return path


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
