#!/usr/bin/env pwsh
# Sdp build entry point. Run with the pinned PowerShell:
#   dotnet tool restore
#   dotnet pwsh build.ps1 <target> [-Configuration Release]
# Targets:
#   build  - restore and build the solution
#   test   - run the NUnit suite; prints "N passed, N failed, N skipped" from the TRX results
#   bench  - `sdp bench gemm` (our GEMM vs OpenBLAS; needs libopenblas0-pthread)
#   pack   - NuGet packages of the libraries into artifacts/packages
param(
    [Parameter(Position = 0)]
    [ValidateSet('build', 'test', 'bench', 'pack')]
    [string] $Target = 'build',
    [string] $Configuration = 'Release',
    # Extra arguments for `dotnet test`, e.g. -TestFilter "TestCategory!=Gpu"
    [string] $TestFilter = ''
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest
$root = $PSScriptRoot
$solution = Join-Path $root 'Sdp.sln'

function Invoke-Checked([string] $what, [scriptblock] $command) {
    & $command
    if ($LASTEXITCODE -ne 0) { throw "$what failed with exit code $LASTEXITCODE" }
}

# The emulated CUDA device (native/cudaemu) is compiled by the solution build and compiles kernels with
# the host compiler at test time; install clang-14 where it is missing (Debian, as root).
function Install-Clang {
    if (-not $IsLinux -or (Get-Command clang++-14 -ErrorAction SilentlyContinue)) { return }
    if (-not (Get-Command apt-get -ErrorAction SilentlyContinue) -or (& id -u) -ne '0') { return }
    Invoke-Checked 'apt-get update' { apt-get update -qq }
    Invoke-Checked 'apt-get install clang-14' { apt-get install -y -qq clang-14 }
}

function Invoke-Build {
    Invoke-Checked 'dotnet build' { dotnet build $solution -c $Configuration --nologo }
}

# Reads every TRX file under $dir and returns the summed counters.
function Get-TestCounts([string] $dir) {
    $totals = @{ passed = 0; failed = 0; skipped = 0 }
    foreach ($file in Get-ChildItem -Path $dir -Filter *.trx -Recurse) {
        [xml] $trx = Get-Content -Raw $file.FullName
        $c = $trx.TestRun.ResultSummary.Counters
        $passed = [int] $c.passed
        $failed = [int] $c.failed + [int] $c.error + [int] $c.timeout + [int] $c.aborted
        $totals.passed += $passed
        $totals.failed += $failed
        $totals.skipped += [int] $c.total - $passed - $failed
    }
    return $totals
}

function Invoke-Test {
    $results = Join-Path $root 'artifacts/test-results'
    if (Test-Path $results) { Remove-Item -Recurse -Force $results }
    $testArgs = @('test', $solution, '-c', $Configuration, '--nologo',
        '--logger', 'trx', '--logger', 'console;verbosity=minimal',
        '--results-directory', $results, '--blame-hang-timeout', '5m')
    if ($TestFilter) { $testArgs += @('--filter', $TestFilter) }
    & dotnet @testArgs
    $exit = $LASTEXITCODE
    $counts = Get-TestCounts $results
    if ($counts.passed + $counts.failed -eq 0 -and $exit -eq 0) { $exit = 1; Write-Host 'no test ran' }
    # The plain summary line CI reads; keep it last.
    Write-Host "$($counts.passed) passed, $($counts.failed) failed, $($counts.skipped) skipped"
    if ($exit -ne 0) { exit $exit }
}

if ($Target -in 'build', 'test', 'pack') { Install-Clang }

switch ($Target) {
    'build' { Invoke-Build }
    'test' { Invoke-Test }
    'bench' {
        # The baseline is OpenBLAS; install it where this machine can (Debian, as root) and lacks it.
        $openblas = '/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0'
        if (-not (Test-Path $openblas) -and (Get-Command apt-get -ErrorAction SilentlyContinue)) {
            Invoke-Checked 'apt-get update' { apt-get update -qq }
            Invoke-Checked 'apt-get install libopenblas0-pthread' { apt-get install -y -qq libopenblas0-pthread }
        }
        Invoke-Checked 'sdp bench gemm' { dotnet run --project (Join-Path $root 'src/Sdp.Cli') -c $Configuration -- bench gemm }
    }
    'pack' {
        $out = Join-Path $root 'artifacts/packages'
        Invoke-Checked 'dotnet pack' { dotnet pack $solution -c $Configuration -o $out --nologo }
        Get-ChildItem $out -Filter *.nupkg | ForEach-Object { Write-Host "packed $($_.Name)" }
    }
}
