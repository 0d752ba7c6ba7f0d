#!/usr/bin/env bash
# Set up a machine for this project: Python dependencies, Dassl.pytorch, this package.
set -euo pipefail

DASSL_REPO="https://github.com/KaiyangZhou/Dassl.pytorch"
DASSL_COMMIT="c61a1b570ac6333bd50fb5ae06aea59002fb20bb"  # last commit of Dassl.pytorch (2022-10-06)

usage() {
  cat <<EOF
Usage: bash scripts/install.sh [--dassl-src PATH | --dassl-archive FILE] [--teachers] [--only-missing] [--dassl-optional]

Installs, with the current python's pip:
  1. PyTorch, unless torch and torchvision already import (set TORCH_PACKAGES to choose the
     build, e.g. TORCH_PACKAGES="torch==2.4.1 torchvision==0.19.1 --index-url ...");
  2. Dassl.pytorch: from the local checkout given by --dassl-src or \$DASSL_SRC, or from a
     \`git archive\` tarball of the pinned commit given by --dassl-archive or \$DASSL_ARCHIVE (its
     embedded commit id is checked), otherwise from ${DASSL_REPO} at commit ${DASSL_COMMIT:0:12}
     (skipped when no source is given and dassl already imports);
  3. this project's dependencies and test tools (pip install -e ".[test]").

Options:
  --dassl-src PATH   install Dassl from this local checkout of Dassl.pytorch (same as DASSL_SRC=PATH)
  --dassl-archive FILE
                     install Dassl from this .tar.gz made by \`git archive\` of commit ${DASSL_COMMIT:0:12}
                     (for machines that cannot reach the git host); another commit is refused
  --teachers         also install open_clip_torch, for open_clip teachers (e.g. ViT-H-14 DFN5B)
  --only-missing     install only what is missing: Dassl only when it does not import (even with a
                     source given), the project's dependencies only when one is not installed at a
                     version requirements.txt allows (the quick-start scripts rerun this way)
  --dassl-optional   do not fail when Dassl cannot be installed (the Dassl tests are then skipped)
  -h, --help         show this help
EOF
}

dassl_src="${DASSL_SRC:-}"
dassl_archive="${DASSL_ARCHIVE:-}"
extras="test"
only_missing=0
dassl_optional=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dassl-src) dassl_src="$2"; shift 2 ;;
    --dassl-archive) dassl_archive="$2"; shift 2 ;;
    --teachers) extras="test,teachers"; shift ;;
    --only-missing) only_missing=1; shift ;;
    --dassl-optional) dassl_optional=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python=${PYTHON:-python3}
pip() { "$python" -m pip install --disable-pip-version-check "$@"; }

echo "[1/3] PyTorch"
if "$python" -c "import torch, torchvision" 2>/dev/null; then
  echo "      found torch $("$python" -c 'import torch; print(torch.__version__)')"
else
  # shellcheck disable=SC2086  # TORCH_PACKAGES is a list of pip arguments
  pip ${TORCH_PACKAGES:-torch torchvision}
fi
# Dassl builds without isolation (its setup.py imports nothing else), with these build tools.
if [ "$only_missing" = 0 ] || ! "$python" -c "import dassl" 2>/dev/null; then pip "setuptools<81" wheel numpy; fi

echo "[2/3] Dassl.pytorch"
# unpack_dassl_archive FILE: dassl_src = its unpacked Dassl.pytorch folder, once its commit id is the pinned one.
unpack_dassl_archive() {
  local archive="$1" commit
  [ -f "$archive" ] || { echo "install.sh: --dassl-archive '$archive' is not a file" >&2; return 1; }
  # get-tar-commit-id reads only the header, so gzip may die of SIGPIPE: its status is not the answer
  commit="$({ gzip -dc "$archive" 2>/dev/null || true; } | git get-tar-commit-id)" || commit=""
  if [ "$commit" != "$DASSL_COMMIT" ]; then
    echo "install.sh: --dassl-archive '$archive' is not a git archive of the pinned commit $DASSL_COMMIT (its commit id: ${commit:-none})" >&2
    return 1
  fi
  unpacked_archive="$(mktemp -d)"
  trap 'rm -rf "$unpacked_archive"' EXIT
  tar -xzf "$archive" -C "$unpacked_archive"
  dassl_src="$unpacked_archive/Dassl.pytorch"
}

install_dassl() {
  if [ "$only_missing" = 1 ] && "$python" -c "import dassl" 2>/dev/null; then
    echo "      found dassl (--only-missing)"
    return 0
  fi
  if [ -n "$dassl_archive" ]; then unpack_dassl_archive "$dassl_archive" || return 1; fi
  if [ -n "$dassl_src" ]; then
    [ -f "$dassl_src/setup.py" ] || { echo "install.sh: no Dassl.pytorch checkout at '$dassl_src' (no setup.py)" >&2; return 1; }
    pip --no-build-isolation --no-deps "$dassl_src"
  elif "$python" -c "import dassl" 2>/dev/null; then
    echo "      dassl already installed; give --dassl-src to reinstall from a checkout"
  else
    pip --no-build-isolation --no-deps "git+${DASSL_REPO}@${DASSL_COMMIT}"
  fi
}
if ! install_dassl; then
  if [ "$dassl_optional" = 1 ]; then
    echo "install.sh: Dassl.pytorch could not be installed; continuing (--dassl-optional)." >&2
    echo "            Tests that need Dassl will be skipped. Use --dassl-src PATH with a local checkout." >&2
  else
    echo "install.sh: Dassl.pytorch could not be installed. Without internet access, clone it elsewhere" >&2
    echo "            and rerun with --dassl-src /path/to/Dassl.pytorch." >&2
    exit 1
  fi
fi

# missing_requirements: the requirements (requirements.txt, the chosen extras, this project itself)
# that are not installed at an allowed version, one per line; "packaging" when it cannot tell.
missing_requirements() {
  "$python" - "$repo_root" "$extras" <<'PY'
import importlib.metadata as metadata
import os
import re
import sys

try:
    from packaging.requirements import Requirement
except ImportError:
    sys.exit(print("packaging"))
repo_root, extras = sys.argv[1], sys.argv[2].split(",")
with open(os.path.join(repo_root, "requirements.txt"), encoding="utf-8") as handle:
    lines = [line.split("#", 1)[0].strip() for line in handle]
with open(os.path.join(repo_root, "setup.py"), encoding="utf-8") as handle:
    setup = handle.read()
for extra in extras:
    match = re.search(rf'"{extra}": \[([^\]]*)\]', setup)
    lines += re.findall(r'"([^"]+)"', match.group(1)) if match else [extra]
with open(os.path.join(repo_root, "trainers", "__init__.py"), encoding="utf-8") as handle:
    version = re.search(r'^__version__ = "([^"]+)"', handle.read(), re.MULTILINE).group(1)
lines.append(f"fdbpl-dassl=={version}")
for requirement in (Requirement(line) for line in lines if line):
    try:
        installed = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        print(requirement.name)
        continue
    if not requirement.specifier.contains(installed, prereleases=True):
        print(f"{requirement.name} (found {installed})")
PY
}

echo "[3/3] project dependencies"
missing="$(missing_requirements)"
if [ "$only_missing" = 1 ] && [ -z "$missing" ]; then
  echo "      all installed (--only-missing)"
else
  [ -z "$missing" ] || echo "      missing: $(echo "$missing" | paste -sd, | sed 's/,/, /g')"
  pip -e "${repo_root}[${extras}]"
fi

"$python" - <<'PY'
import importlib.util
missing = [m for m in ("torch", "torchvision", "clip", "h5py", "yacs", "dassl") if importlib.util.find_spec(m) is None]
print("Installed." if not missing else f"Installed, except: {', '.join(missing)}")
PY
