"""Write an Alembic revision from the models (developer tool, not shipped).

    .venv/bin/python tools/makemigration.py 0002 "events outbox"

If a revision with that id exists it is rewritten from scratch against its parent, so
several branches of work can regenerate one pending revision from all current models.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory

from stallholder.migrations import HERE, alembic_config


def main() -> None:
    rev_id, message = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as folder:
        config = alembic_config(f"sqlite:///{Path(folder) / 'gen.db'}")
        scripts = ScriptDirectory.from_config(config)
        existing = (
            scripts.get_revision(rev_id)
            if rev_id in {r.revision for r in scripts.walk_revisions()}
            else None
        )
        parent = "head"
        if existing is not None:
            parent = str(existing.down_revision or "base")
            Path(existing.path).unlink()
        command.upgrade(config, parent)
        written = command.revision(config, message=message, autogenerate=True, rev_id=rev_id)
    assert written is not None
    assert not isinstance(written, list)
    ruff = str(Path(sys.executable).parent / "ruff")
    subprocess.run([ruff, "check", "--fix", "--quiet", written.path], check=False)
    subprocess.run([ruff, "format", "--quiet", written.path], check=True)
    print(f"wrote revision {rev_id} in {HERE / 'versions'}")


if __name__ == "__main__":
    main()
