"""Where relative paths in a config point (the project root when running from a checkout), and the one
way every file of a run or a build is written (`atomic_write`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable

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


def project_relative(path: str | Path) -> str:
    """The inverse of `resolve` for what is written out (status lines, tables, executed notebooks): a
    path inside the project relative to it, so nothing published names a machine's folders; other
    paths as they are."""
    try:
        return resolve(path).resolve().relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return str(path)


def atomic_write(path: str | Path, data: str | bytes | Callable[[BinaryIO], None]) -> Path:
    """Write a file so that readers see the old contents or the new ones, never a part: the data go to
    `<name>.tmp` beside it, then os.replace. `data` is text (UTF-8), bytes, or a function that writes
    to the open binary file (e.g. `lambda f: torch.save(state, f)`). A failed write leaves no tmp file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            if isinstance(data, str):
                f.write(data.encode("utf-8"))
            elif isinstance(data, bytes):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
