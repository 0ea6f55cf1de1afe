"""Where relative paths in a config point: the project root when running from a checkout."""
from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def resolve(path: str | Path, base: str | Path | None = None) -> Path:
    """Absolute paths stay; relative ones resolve against base, else the project root (a checkout
    has pyproject.toml there), else the current folder. Notebooks running in notebooks/ and jobs
    started anywhere thus see the same data/ and runs/."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if base is not None:
        return Path(base) / p
    if (PROJECT_ROOT / "pyproject.toml").exists():
        return PROJECT_ROOT / p
    return Path.cwd() / p
