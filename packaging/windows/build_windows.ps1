# Build mixdesk for Windows: the PyInstaller folder, a .zip of it, and the Inno Setup
# installer, all in dist\. Then smoke-test the frozen app the way smoke.sh does on Linux.
# Run from anywhere in a checkout, with the build environment's Python active:
#   $env:TORCH_VARIANT = "cpu"   # or "cuda"
#   powershell -ExecutionPolicy Bypass -File packaging\windows\build_windows.ps1
# Needs: Python 3.11 with mixdesk's requirements and pyinstaller, and Inno Setup 6
# (iscc.exe on PATH, or in its default folder). Not run here: written to match the
# Linux recipe and run by .github/workflows/package.yml.
$ErrorActionPreference = "Stop"
$Repo = (Resolve-Path "$PSScriptRoot\..\..").Path
Set-Location $Repo
$Variant = if ($env:TORCH_VARIANT) { $env:TORCH_VARIANT } else { "cpu" }
$Python = if ($env:PYTHON) { $env:PYTHON } else { "python" }
$Version = (Select-String -Path pyproject.toml -Pattern '^version = "(.*)"').Matches[0].Groups[1].Value
$Dist = Join-Path $Repo "dist"

$start = Get-Date
& $Python -m PyInstaller --noconfirm --log-level WARN --distpath $Dist `
    --workpath (Join-Path $Repo "build\pyinstaller") packaging\mixdesk.spec
if ($LASTEXITCODE -ne 0) { throw "PyInstaller failed" }
Write-Host "[build_windows] bundle built in $([int]((Get-Date) - $start).TotalSeconds) s"

# the frozen selftest, on the tiny Mixtral fixture (the frozen app has no demo builder)
$Model = Join-Path $Repo "build\smoke\tiny-random-mixtral"
if (-not (Test-Path "$Model\config.json")) {
    & $Python tests\fixtures\builders.py tiny-random-mixtral $Model
    if ($LASTEXITCODE -ne 0) { throw "could not build the test model" }
}
$env:QT_QPA_PLATFORM = "offscreen"
& "$Dist\mixdesk\mixdesk.exe" gui --selftest --timeout 300 --model $Model
if ($LASTEXITCODE -ne 0) { throw "the frozen selftest failed" }
Remove-Item Env:\QT_QPA_PLATFORM

$Zip = Join-Path $Dist "mixdesk-$Version-windows-x64-$Variant.zip"
if (Test-Path $Zip) { Remove-Item $Zip }
Compress-Archive -Path "$Dist\mixdesk" -DestinationPath $Zip -CompressionLevel Optimal

$Iscc = (Get-Command iscc.exe -ErrorAction SilentlyContinue).Source
if (-not $Iscc) { $Iscc = "${env:ProgramFiles(x86)}\Inno Setup 6\ISCC.exe" }
& $Iscc /Q "/DAppVersion=$Version" "/DVariant=$Variant" "/DDistDir=$Dist" packaging\windows\mixdesk.iss
if ($LASTEXITCODE -ne 0) { throw "Inno Setup failed" }

# install silently into a temporary folder, run the installed selftest, uninstall
$Setup = Join-Path $Dist "mixdesk-$Version-windows-x64-$Variant-setup.exe"
$Target = Join-Path $env:RUNNER_TEMP "mixdesk-install"
if (-not $env:RUNNER_TEMP) { $Target = Join-Path $env:TEMP "mixdesk-install" }
Start-Process -Wait -FilePath $Setup -ArgumentList "/VERYSILENT", "/SUPPRESSMSGBOXES", "/CURRENTUSER", "/DIR=$Target"
$env:QT_QPA_PLATFORM = "offscreen"
& "$Target\mixdesk.exe" gui --selftest --timeout 300 --model $Model
if ($LASTEXITCODE -ne 0) { throw "the installed selftest failed" }
Start-Process -Wait -FilePath "$Target\unins000.exe" -ArgumentList "/VERYSILENT", "/SUPPRESSMSGBOXES"
if (Test-Path "$Target\mixdesk.exe") { throw "the uninstaller left mixdesk.exe behind" }

Get-ChildItem $Dist -File | ForEach-Object { Write-Host ("[build_windows] {0} {1:N0} MB" -f $_.Name, ($_.Length / 1MB)) }
