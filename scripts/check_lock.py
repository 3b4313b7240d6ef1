"""Whether the committed dvc.lock was made by this code and these params: CI runs it.

    python scripts/check_lock.py

``dvc status`` lists a stage's code or params as modified when dvc.lock was written before them;
then a fresh clone's ``dvc status`` and ``dvc pull`` would say every such stage must rerun, and
the committed reports were not made by this code. Outputs missing here (a fresh clone has none)
are not the lock's fault and are passed over. Exits 1 with one line naming what changed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imgclf import pipeline  # noqa: E402


def behind() -> list[str]:
    """``stage: dep`` for each code dep or params file that dvc.lock has other contents for."""
    out = subprocess.run(["dvc", "status", "--json"], cwd=ROOT, capture_output=True, text=True, check=True)
    found = []
    for name, changes in json.loads(out.stdout or "{}").items():
        code = set(pipeline.stage(name).code)  # dvc.yaml is written from the pipeline (tests/test_dvc_yaml.py)
        deps = [change["changed deps"] for change in changes if isinstance(change, dict) and "changed deps" in change]
        for dep, state in (item for changed in deps for item in changed.items()):
            if isinstance(state, dict) or (dep in code and state == "modified"):  # a dict: params changed
                found.append(f"{name}: {dep}")
    return found


if __name__ == "__main__":
    stale = behind()
    if stale:
        print(
            f"dvc.lock is behind the code or params ({', '.join(stale)}): run `dvc repro` and commit "
            "dvc.lock and reports/",
            file=sys.stderr,
        )
        sys.exit(1)
    print("dvc.lock matches the code and params")
