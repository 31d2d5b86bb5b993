# azd prepackage hook (service healer): ship the app's own modules as compiled bytecode.
# See prepackage.sh: Flex Consumption's package is read-only, so Python could not write
# __pycache__ there and would compile our sources on every cold start. Hash-checked pycs
# (PEP 552) stay valid although zip archives round file times.
param([string]$AppDir = (Resolve-Path (Join-Path $PSScriptRoot '../..')))
$ErrorActionPreference = 'Stop'
$python = if ($env:PYTHON) { $env:PYTHON } else { 'python' }
Set-Location $AppDir
$version = & $python -c 'import sys; print("%d.%d" % sys.version_info[:2])'
if ($version -ne '3.11') {
  Write-Warning "prepackage: $python is Python $version; the app runs on 3.11, so these pycs will not be used. Set PYTHON to a 3.11 interpreter."
}
& $python -m compileall -q -f --invalidation-mode checked-hash function_app.py remediation
if ($LASTEXITCODE -ne 0) { throw "compileall failed ($LASTEXITCODE)" }
Write-Output "prepackage: compiled function_app.py and remediation/ for Python $version (checked-hash)"
