# Build the frozen MPS folder and the per-user installer on a Windows machine.
#
#   powershell -ExecutionPolicy Bypass -File installer\windows\build_windows.ps1
#
# Needs Python 3.11+ (the `py` launcher, or set $env:PYTHON) and Inno Setup 6 (ISCC.exe on
# PATH or in its default folder). Makes a separate build environment (build\frozen\venv-win)
# with the pinned PyInstaller (installer\build-requirements.txt) and the project
# (`pip install .`), freezes dist\mps with installer\mps.spec, runs the frozen smoke test and
# compiles installer\windows\mps.iss with the version from pyproject.toml into
# dist\mps-<version>-windows-x64-setup.exe.
$ErrorActionPreference = "Stop"
$Root = (Resolve-Path (Join-Path $PSScriptRoot "..\..")).Path
Set-Location $Root

$Python = if ($env:PYTHON) { $env:PYTHON } else { "py" }
$PyArgs = if ($env:PYTHON) { @() } else { @("-3.11") }
$Venv = Join-Path $Root "build\frozen\venv-win"
$VPy = Join-Path $Venv "Scripts\python.exe"

function Invoke-Checked([string]$Exe, [string[]]$Arguments) {
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) { throw "$Exe $($Arguments -join ' ') failed ($LASTEXITCODE)" }
}

if (-not (Test-Path $VPy)) {
    Invoke-Checked $Python ($PyArgs + @("-m", "venv", $Venv))
    Invoke-Checked $VPy @("-m", "pip", "install", "-q", "--upgrade", "pip")
}
Invoke-Checked $VPy @("-m", "pip", "install", "-q", "-r", "installer\build-requirements.txt")
Invoke-Checked $VPy @("-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", $Root)
Invoke-Checked $VPy @("-m", "pip", "install", "-q", $Root)

$Version = (& $VPy -c "import tomllib; print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])").Trim()
Write-Host "== freezing MPS $Version"
Invoke-Checked $VPy @("-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN",
    "--distpath", "dist", "--workpath", "build\frozen\work-win", "installer\mps.spec")

Write-Host "== frozen smoke test"
$env:QT_QPA_PLATFORM = "offscreen"
$Shot = Join-Path $Root "build\frozen\smoke-windows.png"
$p = Start-Process -FilePath "dist\mps\mps-gui.exe" -Wait -PassThru -NoNewWindow `
    -ArgumentList @("--smoke-test", "--screenshot", "`"$Shot`"")
Remove-Item Env:QT_QPA_PLATFORM
if ($p.ExitCode -ne 0 -or -not (Test-Path $Shot)) { throw "frozen smoke test failed ($($p.ExitCode))" }

$Iscc = (Get-Command ISCC.exe -ErrorAction SilentlyContinue).Source
foreach ($c in @("${env:ProgramFiles(x86)}\Inno Setup 6\ISCC.exe",
                 "$env:ProgramFiles\Inno Setup 6\ISCC.exe",
                 "$env:LOCALAPPDATA\Programs\Inno Setup 6\ISCC.exe")) {
    if (-not $Iscc -and (Test-Path $c)) { $Iscc = $c }
}
if (-not $Iscc) { throw "Inno Setup 6 (ISCC.exe) not found: install it from its website or winget (JRSoftware.InnoSetup)" }
Write-Host "== installer"
Invoke-Checked $Iscc @("/Q", "/DAppVersion=$Version", "installer\windows\mps.iss")
Write-Host "done: dist\mps-$Version-windows-x64-setup.exe"
