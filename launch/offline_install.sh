#!/usr/bin/env bash
# Installs a bundle written by launch/offline_bundle.py, on a host that
# reaches no package index. Run from the repository root:
#
#   bash <bundle>/part-00/install.sh SITE_DIR
#
# Joins the files of every part folder beside this one into <bundle>/whole,
# checks each against the manifest (size and sha256; a missing or damaged
# file is named and nothing is installed), installs the wheels into SITE_DIR
# without an index or dependency resolution (the bundle holds what the target
# lacked), and prints the environment to export. The stdlib alone runs it.
set -euo pipefail
SITE=${1:?usage: bash <bundle>/part-00/install.sh SITE_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
BUNDLE=$(dirname "$HERE")
WHOLE="$BUNDLE/whole"
PYTHON=${PYTHON:-python3}

"$PYTHON" - "$HERE" "$WHOLE" <<'EOF'
import hashlib
import json
import pathlib
import sys

here, whole = map(pathlib.Path, sys.argv[1:3])
manifest = json.loads((here / "manifest.json").read_text())
own = {here / "manifest.json", here / "install.sh"}
pieces = {}
for part in sorted(here.parent.glob("part-*")):
  for f in sorted(part.rglob("*")):
    if not f.is_file() or f in own:
      continue
    rel = f.relative_to(part).as_posix()
    base, sep, index = rel.rpartition(".piece-")
    if sep and index.isdigit():
      pieces.setdefault(base, []).append((int(index), f))
    else:
      pieces.setdefault(rel, []).append((0, f))
missing = sorted(set(manifest) - set(pieces))
if missing:
  sys.exit(
    f"install.sh: {len(missing)} file(s) of the manifest are in no part "
    f"folder under {here.parent} (copy every part-* folder): "
    + ", ".join(missing[:5])
  )
for rel, entry in sorted(manifest.items()):
  dest = whole / rel
  dest.parent.mkdir(parents=True, exist_ok=True)
  digest = hashlib.sha256()
  size = 0
  with open(dest, "wb") as out:
    for _, f in sorted(pieces[rel]):
      data = f.read_bytes()
      digest.update(data)
      size += len(data)
      out.write(data)
  if size != entry["bytes"] or digest.hexdigest() != entry["sha256"]:
    found = [i for i, _ in sorted(pieces[rel])]
    sys.exit(
      f"install.sh: {rel} is damaged or incomplete: {size} bytes from "
      f"pieces {found}, the manifest says {entry['bytes']} bytes "
      f"(sha256 {entry['sha256'][:12]}...)"
    )
print(f"install.sh: {len(manifest)} files checked into {whole}")
EOF

shopt -s nullglob
wheels=("$WHOLE"/wheels/*.whl)
if ((${#wheels[@]})); then
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index \
    --no-deps --no-compile --target "$SITE" "${wheels[@]}"
fi
SITE=$(cd "$SITE" 2>/dev/null && pwd || echo "$SITE")
echo "install.sh: ${#wheels[@]} wheels in $SITE; now run:"
echo "export PYTHONPATH=$SITE:$PWD ILM_DATA_ROOT=$WHOLE/data"
