#!/usr/bin/env bash
# A plain (non-editable) install works: build the wheel, install it in a fresh virtual environment
# that borrows the current one's dependencies (torch, timm, ...) but not its deflect_min, and run
# load_samples() and the README's "Use it" example from outside the repository.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python -m pip wheel -q --no-deps --no-build-isolation "$repo" -w "$tmp/dist"
python -m venv "$tmp/venv"
purelib='import sysconfig; print(sysconfig.get_paths()["purelib"])'
python -c "$purelib" > "$("$tmp/venv/bin/python" -c "$purelib")/borrowed_deps.pth"
"$tmp/venv/bin/python" -m pip install -q --no-deps "$tmp"/dist/deflect_min-*.whl
cd "$tmp"
"$tmp/venv/bin/python" - "$repo/README.md" <<'PY'
import re, sys
from pathlib import Path

import deflect_min as dm

where = Path(dm.__file__).resolve()
assert "site-packages" in where.parts, f"deflect_min imported from {where}, not the wheel"
samples = dm.load_samples()
assert len(samples) == 30 and len(dm.load_samples(subset="all")) == 60
readme = Path(sys.argv[1]).read_text()
example = re.search(r"## Use it\s+```python\n(.*?)```", readme, re.S).group(1)
exec(compile(example, "README.md (Use it)", "exec"), {})
print(f"check_wheel: ok, deflect_min {dm.__version__} from {where.parent}: "
      f"{len(samples)} sample patches, the README example ran")
PY
