#!/bin/sh
# azd prepackage hook (service healer): ship the app's own modules as compiled bytecode.
#
# Flex Consumption runs the app from a read-only package, so Python cannot write __pycache__ there
# and would compile function_app.py and remediation/ on every cold start. This compiles them into
# __pycache__ before azd zips the project (.funcignore keeps those two __pycache__ directories).
# Hash-checked pycs (PEP 552): zip archives round file times to 2 s, which would make
# timestamp-checked pycs look stale; a hash check reads the source once and stays correct.
# Usage: prepackage.sh [APP_DIR]   (default: the project root). PYTHON picks the interpreter.
set -eu

app_dir=${1:-$(CDPATH='' cd -- "$(dirname -- "$0")/../.." && pwd)}
python=${PYTHON:-python3}
cd "$app_dir"

version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$version" != "3.11" ]; then
  echo "prepackage: $python is Python $version; the app runs on 3.11 (infra/modules/functionapp.bicep), so these pycs will not be used. Set PYTHON to a 3.11 interpreter." >&2
fi
"$python" -m compileall -q -f --invalidation-mode checked-hash function_app.py remediation
echo "prepackage: compiled function_app.py and remediation/ for Python $version (checked-hash)"
