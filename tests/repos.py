"""Empty git + DVC repositories for the tests, as `git init -q && dvc init -q` leaves them.

Made once per test process and copied: `dvc init` costs about 0.4 s of CPU on this 2-core
machine (DVC's imports), and the suite made some seventy repositories. A copy is what a
user's clone has anyway: `.git` and the committed `.dvc/config`, `.dvc/.gitignore`, `.dvcignore`.
Nothing in either folder names the repository's path (DVC keys its site cache by the path
when it first needs it; git's index entries are re-checked by content when their stat differs).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DVC = str(Path(sys.executable).parent / "dvc")
_TEMPLATE: list[Path] = []


def _template() -> Path:
    if not _TEMPLATE:
        folder = Path(tempfile.mkdtemp(prefix="privflow-tests-repo-"))
        atexit.register(shutil.rmtree, folder, True)
        env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(folder / "dvc-site")}
        template = folder / "repo"
        template.mkdir()
        for command in (["git", "init", "-q"], [DVC, "init", "-q"]):
            subprocess.run(command, cwd=template, env=env, check=True)
        _TEMPLATE.append(template)
    return _TEMPLATE[0]


def init_repo(root: Path) -> Path:
    """`root` (made if missing) as `git init -q && dvc init -q` would leave it; returns it."""
    shutil.copytree(_template(), root, symlinks=True, dirs_exist_ok=True)
    return root
