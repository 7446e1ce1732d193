#!/usr/bin/env bash
# The packages' consumer test (issue 16; run by .ci/run): packs everything with `build.ps1 pack` into a temporary
# folder, then, outside the repository, as a user who has only those packages:
#   1. a throwaway console project referencing Sdp.Models (Sdp.Engine and Sdp.Kernels come transitively) from
#      the local folder only (package source mapping: Sdp.* from there, third-party dependencies from nuget.org),
#      with an empty packages folder of its own, trains the SdpEmbedding example's model for a few steps on the
#      CPU (SDP and one worker) and on the emulated CUDA device (tools/consumer/Program.cs);
#   2. installs the sdp tool into a temporary tool path and runs sdp --version, sdp doctor, sdp train --steps 5
#      and sdp train --steps 3 --device cuda (the emulated device; its first line must say EMULATED).
# Any failure exits non-zero. Usage: tools/consumer-test.sh [--keep]   (--keep leaves the temporary folder)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
keep=0; [ "${1:-}" = --keep ] && keep=1
work="$(mktemp -d -t sdp-consumer.XXXXXX)"
if [ "$keep" = 1 ]; then echo "consumer: working in $work (kept)"; else trap 'rm -rf "$work"' EXIT; fi
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
# A packages folder of the test's own: the version does not change between commits, so a user-wide cache could
# hold an older Sdp 0.1.0 and hide a broken package. (Downloads still come from NuGet's HTTP cache.)
export NUGET_PACKAGES="$work/nuget-packages"
fail() { echo "consumer: FAILED: $*" >&2; exit 1; }
step() { echo "consumer: $*"; }
t0=$SECONDS

version="$(sed -n 's:.*<Version>\(.*\)</Version>.*:\1:p' "$root/Directory.Build.props" | head -1)"
[ -n "$version" ] || fail "no <Version> in Directory.Build.props"
commit="$(git -C "$root" rev-parse HEAD 2>/dev/null || true)"

step "packing $version into $work/packages"
(cd "$root" && dotnet tool restore > /dev/null && dotnet pwsh build.ps1 pack -PackageOutput "$work/packages")
pkgs="$work/packages"
for id in Sdp.Kernels Sdp.Engine Sdp.Models Sdp.Cli; do
  [ -f "$pkgs/$id.$version.nupkg" ] || fail "$id.$version.nupkg was not packed"
  [ "$id" = Sdp.Cli ] || [ -f "$pkgs/$id.$version.snupkg" ] || fail "$id.$version.snupkg (symbols) was not packed"
done
listing="$(unzip -l "$pkgs/Sdp.Kernels.$version.nupkg")"
for f in runtimes/linux-x64/native/libcudaemu.so runtimes/linux-x64/native/cudaemu.h lib/net10.0/Sdp.Kernels.dll lib/net10.0/Sdp.Kernels.xml README.md; do
  grep -q " $f\$" <<< "$listing" || fail "Sdp.Kernels.$version.nupkg lacks $f"
done
for id in Sdp.Engine Sdp.Models; do
  grep -q " lib/net10.0/$id.xml\$" <<< "$(unzip -l "$pkgs/$id.$version.nupkg")" || fail "$id.$version.nupkg lacks its XML docs"
done
# kernels.cu is an embedded resource of Sdp.Kernels.dll (its kernels' __global__ must be in the assembly).
unzip -p "$pkgs/Sdp.Kernels.$version.nupkg" lib/net10.0/Sdp.Kernels.dll > "$work/Sdp.Kernels.dll"
grep -aq "__global__" "$work/Sdp.Kernels.dll" || fail "Sdp.Kernels.dll does not embed kernels.cu"
nuspec="$(unzip -p "$pkgs/Sdp.Models.$version.nupkg" Sdp.Models.nuspec)"
grep -q '<license type="expression">MIT</license>' <<< "$nuspec" || fail "Sdp.Models.nuspec has no license"
if [ -n "$commit" ]; then grep -q "commit=\"$commit\"" <<< "$nuspec" || fail "Sdp.Models.nuspec does not record commit $commit"; fi

step "building a console project outside the repository that references Sdp.Models $version"
app="$work/consumer"
mkdir -p "$app"
cat > "$app/nuget.config" << XML
<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <clear />
    <add key="local" value="$pkgs" />
    <add key="nuget.org" value="https://api.nuget.org/v3/index.json" />
  </packageSources>
  <packageSourceMapping>
    <packageSource key="local"><package pattern="Sdp.*" /></packageSource>
    <packageSource key="nuget.org"><package pattern="*" /></packageSource>
  </packageSourceMapping>
</configuration>
XML
cat > "$app/Consumer.csproj" << XML
<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <OutputType>Exe</OutputType>
    <TargetFramework>net10.0</TargetFramework>
    <Nullable>enable</Nullable>
    <ImplicitUsings>enable</ImplicitUsings>
    <TreatWarningsAsErrors>true</TreatWarningsAsErrors>
  </PropertyGroup>
  <ItemGroup>
    <PackageReference Include="Sdp.Models" Version="$version" />
  </ItemGroup>
</Project>
XML
cp "$root/tools/consumer/Program.cs" "$app/Program.cs"
# The example's model: its using directives, then everything from its first type declaration on.
example="$root/examples/SdpEmbedding/Program.cs"
{ grep -E '^using (static )?[A-Za-z_.]+;$' "$example"; awk '/^(\/\/\/|sealed class|static class|class )/ { on = 1 } on' "$example"; } > "$app/Model.cs"
grep -q 'class ResidualMlp' "$app/Model.cs" || fail "could not cut the model out of $example"
(cd "$app" && dotnet build -c Release --nologo -v q) || fail "the consumer project does not build"
step "running it (cpu, then the emulated CUDA device)"
(cd "$app" && dotnet bin/Release/net10.0/Consumer.dll) || fail "the consumer program failed"

step "installing the sdp tool into $work/tools"
cat > "$work/tool-nuget.config" << XML
<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <clear />
    <add key="local" value="$pkgs" />
  </packageSources>
</configuration>
XML
(cd "$work" && dotnet tool install Sdp.Cli --version "$version" --tool-path "$work/tools" --configfile "$work/tool-nuget.config") \
  || fail "dotnet tool install Sdp.Cli failed"
sdp="$work/tools/sdp"
cd "$work"
out="$("$sdp" --version)" || fail "sdp --version failed"
echo "sdp --version: $out"
case "$out" in "$version"*) ;; *) fail "sdp --version printed '$out', not the package version $version" ;; esac
if [ -n "$commit" ]; then case "$out" in *"$commit"*) ;; *) fail "sdp --version does not name commit $commit" ;; esac; fi
"$sdp" doctor || fail "sdp doctor failed"
"$sdp" train --steps 5 || fail "sdp train --steps 5 failed"
# Small batches: the emulated device runs kernels at CPU speed (the default batch takes ~30 s a step here).
out="$("$sdp" train --steps 3 --device cuda --batch 4 --seq 32 --eval-batches 1)" || { echo "$out"; fail "sdp train --steps 3 --device cuda failed"; }
echo "$out"
head -1 <<< "$out" | grep -q EMULATED || fail "sdp train --device cuda: the first line does not say EMULATED"
step "ok ($((SECONDS - t0)) s)"
