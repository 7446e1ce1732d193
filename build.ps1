#!/usr/bin/env pwsh
# Sdp build entry point. Run with the pinned PowerShell:
#   dotnet tool restore
#   dotnet pwsh build.ps1 <target> [-Configuration Release]
# Targets:
#   build  - restore and build the solution
#   test   - run the NUnit suite; prints "N passed, N failed, N skipped" from the TRX results
#   bench  - `sdp bench gemm` (our GEMM vs OpenBLAS; needs libopenblas0-pthread)
#   pack   - NuGet packages into artifacts/packages (or -PackageOutput DIR): the libraries Sdp.Kernels,
#            Sdp.Engine, Sdp.Models (with .snupkg symbols) and the sdp tool Sdp.Cli; a deterministic CI build
#   gpu-pack  - self-contained linux-x64 test executable + sdp CLI + kernels.cu + tools/gpu-check.sh
#               in .gpu/sdp-gpu.tar.xz (under 60 MB), for a GPU machine without .NET (docs/gpu-status.md)
#   gpu-check - unpacks .gpu/sdp-gpu.tar.xz and runs its gpu-check.sh (on a GPU machine without .NET,
#               run `bash tools/gpu-check.sh` directly; logs go to $OUT, default ./gpu-out)
param(
    [Parameter(Position = 0)]
    [ValidateSet('build', 'test', 'bench', 'pack', 'gpu-pack', 'gpu-check')]
    [string] $Target = 'build',
    [string] $Configuration = 'Release',
    # Extra arguments for `dotnet test`, e.g. -TestFilter "TestCategory!=Gpu"
    [string] $TestFilter = '',
    # pack: where the packages go (default artifacts/packages)
    [string] $PackageOutput = ''
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

# The MPI tests (tests/Sdp.Tests/Distributed/MpiCommunicatorTests.cs) run `sdp comm-check` under mpirun, and
# the MPI bindings load Open MPI's libmpi.so.40; install Open MPI where mpirun is missing (Debian, as root).
function Install-OpenMpi {
    if (-not $IsLinux -or (Get-Command mpirun -ErrorAction SilentlyContinue)) { return }
    if (-not (Get-Command apt-get -ErrorAction SilentlyContinue) -or (& id -u) -ne '0') { return }
    Invoke-Checked 'apt-get update' { apt-get update -qq }
    Invoke-Checked 'apt-get install openmpi-bin libopenmpi-dev' { apt-get install -y -qq openmpi-bin libopenmpi-dev }
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

# gpu-pack: publishes, self-contained for linux-x64, the test project as an executable running its own tests
# (SdpGpuPack=true switches on the NUnit runner on Microsoft Testing Platform for this publish only; the
# normal `dotnet test` path is unchanged) and the sdp CLI; adds kernels.cu and the GPU check script.
# Files the CLI shares byte for byte with the tests become hard links, which tar stores once.
function Invoke-GpuPack {
    $stage = Join-Path $root 'artifacts/gpu-pack'
    $archive = Join-Path $root '.gpu/sdp-gpu.tar.xz'
    if (Test-Path $stage) { Remove-Item -Recurse -Force $stage }
    New-Item -ItemType Directory -Force -Path $stage, (Split-Path $archive) | Out-Null
    $publish = @('-c', $Configuration, '-r', 'linux-x64', '--self-contained', '--nologo')
    try {
        Invoke-Checked 'dotnet publish (tests)' {
            dotnet publish (Join-Path $root 'tests/Sdp.Tests/Sdp.Tests.csproj') @publish '-p:SdpGpuPack=true' -o (Join-Path $stage 'tests')
        }
        Invoke-Checked 'dotnet publish (sdp)' {
            dotnet publish (Join-Path $root 'src/Sdp.Cli/Sdp.Cli.csproj') @publish -o (Join-Path $stage 'cli')
        }
    }
    finally {
        # The publish restored the test project with the runner's packages and a runtime: put the
        # normal restore back for the next build.
        Invoke-Checked 'dotnet restore' { dotnet restore $solution --nologo }
    }
    foreach ($dir in 'tests', 'cli') {
        foreach ($file in 'Sdp.Kernels.dll', 'libcudaemu.so', 'cudaemu.h') {
            if (-not (Test-Path (Join-Path $stage "$dir/$file"))) { throw "gpu-pack: $dir/$file is missing (the emulated device must sit next to Sdp.Kernels.dll)" }
        }
    }
    Copy-Item (Join-Path $root 'kernels.cu') $stage
    Copy-Item (Join-Path $root 'tools/gpu-check.sh') $stage
    Invoke-Checked 'chmod' { chmod +x (Join-Path $stage 'gpu-check.sh') (Join-Path $stage 'tests/Sdp.Tests') (Join-Path $stage 'cli/sdp') }
    $commit = (& git -C $root rev-parse --short HEAD 2>$null)
    $dirty = if (& git -C $root status --porcelain 2>$null) { ' (uncommitted changes)' } else { '' }
    @("sdp-gpu: commit $commit$dirty, packed $((Get-Date).ToUniversalTime().ToString('yyyy-MM-ddTHH:mm:ssZ')), $Configuration linux-x64 self-contained",
      'tests/Sdp.Tests  test executable (NUnit runner on MTP): --filter "TestCategory=CudaReal" / "TestCategory=CudaCross" / "FullyQualifiedName~Sdp.Tests.Cuda"',
      'cli/sdp          the sdp CLI (sdp doctor)',
      'kernels.cu       the custom kernels (also embedded in Sdp.Kernels.dll)',
      'gpu-check.sh     the GPU check: bash gpu-check.sh (logs in $OUT, default ./gpu-out)') |
        Set-Content (Join-Path $stage 'MANIFEST')
    $linked = 0
    foreach ($file in Get-ChildItem -File (Join-Path $stage 'cli')) {
        $twin = Join-Path $stage "tests/$($file.Name)"
        if ((Test-Path $twin) -and (Get-FileHash $twin).Hash -eq (Get-FileHash $file.FullName).Hash) {
            Invoke-Checked 'ln' { ln -f $twin $file.FullName }
            $linked++
        }
    }
    if (Test-Path $archive) { Remove-Item -Force $archive }
    $env:XZ_OPT = '-6 -T0'
    Invoke-Checked 'tar' { tar -C $stage -cJf $archive MANIFEST gpu-check.sh kernels.cu tests cli }
    $mb = (Get-Item $archive).Length / 1MB
    Write-Host ("gpu-pack: {0} ({1:N1} MB; {2} CLI files stored once as hard links to the tests' copies)" -f $archive, $mb, $linked)
    if ($mb -ge 60) { throw "gpu-pack: the archive is $([math]::Round($mb, 1)) MB, over the 60 MB limit" }
}

if ($Target -in 'build', 'test', 'pack', 'gpu-pack') { Install-Clang }
if ($Target -in 'build', 'test') { Install-OpenMpi }

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
        $out = if ($PackageOutput) { $PackageOutput } else { Join-Path $root 'artifacts/packages' }
        # ContinuousIntegrationBuild: source paths in the PDBs are mapped to /_/ (deterministic across machines).
        Invoke-Checked 'dotnet pack' { dotnet pack $solution -c $Configuration -o $out --nologo -p:ContinuousIntegrationBuild=true }
        Get-ChildItem $out -Filter *.*nupkg | ForEach-Object { Write-Host "packed $($_.Name)" }
    }
    'gpu-pack' { Invoke-GpuPack }
    'gpu-check' {
        # The same script a GPU machine runs with bash; here it unpacks .gpu/sdp-gpu.tar.xz into /tmp first.
        & bash (Join-Path $root 'tools/gpu-check.sh') (Join-Path $root '.gpu/sdp-gpu.tar.xz')
        exit $LASTEXITCODE
    }
}
