#!/usr/bin/env bash
# The GPU check: the one command to run on a lent GPU machine (no .NET there; see docs/gpu-status.md,
# "How to run the GPU check"). `build.ps1 gpu-pack` puts this script into .gpu/sdp-gpu.tar.xz next to the
# self-contained test executable (tests/Sdp.Tests), the CLI (cli/sdp) and kernels.cu.
#
#   bash tools/gpu-check.sh [ARCHIVE.tar.xz | UNPACKED-DIR]
#
# Without an argument it uses the folder it sits in when that is an unpacked archive, else
# .gpu/sdp-gpu.tar.xz beside the repository it belongs to. Logs go to $OUT (default ./gpu-out):
#   gpu-check.log (everything), gpu-info.log, libraries.log, doctor.log, gpu-emu.log, gpu-tests.log,
#   gpu-cross.log, memcheck.log, nccl-1.log, nccl-2.log, train.log, bench.log, summary.txt (one line per step with its exit status).
# Steps: nvidia-smi; find libcuda/libnvrtc/libcublas/libnccl (CUDA toolkit and pip nvidia/*/lib folders)
# and export LD_LIBRARY_PATH; `sdp doctor`; the Cuda tests on the emulated device (with g++);
# the Cuda tests with SDP_CUDA=real (category CudaReal); the real-against-emulated cross-check with
# SDP_CUDA=both (category CudaCross); compute-sanitizer memcheck on the real KernelTests if present;
# multi-process NCCL under mpirun when Open MPI is there (one rank, then two ranks sharing the card);
# then the README's main job with --device cuda and `sdp bench kernels --device cuda`. Everything stays under
# 8 minutes: each step's timeout is capped by what is left of a 7.5-minute budget.
set -uo pipefail

start=$(date +%s)
budget=450
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${OUT:-./gpu-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
exec > >(tee -a "$OUT/gpu-check.log") 2>&1
summary="$OUT/summary.txt"
: > "$summary"
failed=0

left() { echo $(( budget - ($(date +%s) - start) )); }

# step NAME SECONDS LOG CMD...: runs CMD with a timeout (capped by the budget left), logs to $OUT/LOG.
step() {
  local name="$1" limit="$2" log="$3"
  shift 3
  local rest
  rest=$(left)
  if [ "$rest" -lt 10 ]; then
    echo "== $name: skipped, the 8-minute budget is spent" | tee -a "$summary"
    failed=1
    return
  fi
  [ "$limit" -gt "$rest" ] && limit=$rest
  echo
  echo "== $name (timeout ${limit}s) =="
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$log"
  local rc=${PIPESTATUS[0]}
  echo "$name: exit $rc ($(( $(date +%s) - start ))s elapsed)" | tee -a "$summary"
  [ "$rc" -ne 0 ] && failed=1
  return 0
}

# ---- the unpacked archive ----
arg="${1:-}"
if [ -n "$arg" ] && [ -d "$arg" ]; then
  pack="$(cd "$arg" && pwd)"
elif [ -z "$arg" ] && [ -x "$here/tests/Sdp.Tests" ]; then
  pack="$here"
else
  archive="${arg:-$here/../.gpu/sdp-gpu.tar.xz}"
  if [ ! -f "$archive" ]; then
    echo "gpu-check: no archive at $archive (run \`dotnet pwsh build.ps1 gpu-pack\` on the development machine)" >&2
    exit 2
  fi
  pack="$(mktemp -d /tmp/sdp-gpu.XXXXXX)"
  trap 'rm -rf "$pack"' EXIT
  echo "unpacking $archive into $pack"
  tar xJf "$archive" -C "$pack" || exit 2
fi
tests="$pack/tests/Sdp.Tests"
sdp="$pack/cli/sdp"
echo "sdp gpu-check: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), archive $pack"
[ -f "$pack/MANIFEST" ] && cat "$pack/MANIFEST"

# ---- the card ----
if command -v nvidia-smi > /dev/null 2>&1; then
  step "nvidia-smi" 30 gpu-info.log nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
else
  echo "nvidia-smi: not found" | tee "$OUT/gpu-info.log" | tee -a "$summary"
fi

# ---- the native libraries: the CUDA toolkit first (NVRTC matching the driver), then pip wheels ----
find_libs() {
  local roots=()
  for r in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda /usr/local/cuda-* /usr/lib/x86_64-linux-gnu /usr/lib64 \
           /usr/local/lib /usr/lib/python3* /opt /root/.local /home "${VIRTUAL_ENV:-}" "${CONDA_PREFIX:-}"; do
    [ -n "$r" ] && [ -d "$r" ] && roots+=("$r")
  done
  # Python's own site-packages folders (PyTorch's pip wheels put the libraries in nvidia/*/lib there).
  if command -v python3 > /dev/null 2>&1; then
    while IFS= read -r r; do [ -d "$r/nvidia" ] && roots+=("$r/nvidia"); done < <(timeout 20 python3 -c \
      'import site; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null)
  fi
  find "${roots[@]}" \( -name 'libcuda.so*' -o -name 'libnvrtc.so*' -o -name 'libnvrtc-builtins.so*' -o -name 'libcublas.so*' \
       -o -name 'libcublasLt.so*' -o -name 'libnccl.so*' \) \( -type f -o -type l \) 2>/dev/null | grep -v '/stubs/' | sort -u
}
echo
echo "== native libraries =="
libs=$(timeout 60 bash -c "$(declare -f find_libs); find_libs")
echo "$libs" | tee "$OUT/libraries.log"
ld=""
for pattern in '/cuda[^/]*/' '' ; do # toolkit folders first, then the rest (pip nvidia/*/lib, system)
  for dir in $(echo "$libs" | grep -E "${pattern:-.}" | xargs -r -n1 dirname | awk '!seen[$0]++'); do
    case ":$ld:" in *":$dir:"*) ;; *) ld="${ld:+$ld:}$dir" ;; esac
  done
done
ld="$ld${LD_LIBRARY_PATH:+${ld:+:}$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH="$ld"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" | tee -a "$OUT/libraries.log"

# The emulated device compiles kernels.cu with the host compiler at run time; this machine has g++ (no clang).
if [ -z "${SDP_CUDAEMU_CXX:-}" ]; then
  if command -v g++ > /dev/null 2>&1; then export SDP_CUDAEMU_CXX=g++; else export SDP_CUDAEMU_CXX=c++; fi
fi
echo "SDP_CUDAEMU_CXX=$SDP_CUDAEMU_CXX"

# ---- sdp doctor ----
step "sdp doctor" 60 doctor.log env SDP_CUDA=auto "$sdp" doctor

# ---- the tests (NUnit runner on Microsoft Testing Platform; categories CudaEmu, CudaReal, CudaCross) ----
topts=(--no-ansi --no-progress --output Detailed)
step "Cuda tests, emulated device (g++)" 120 gpu-emu.log env SDP_CUDA=emu "$tests" "${topts[@]}" --filter 'TestCategory=CudaEmu'
step "Cuda tests, SDP_CUDA=real" 150 gpu-tests.log env SDP_CUDA=real "$tests" "${topts[@]}" --filter 'TestCategory=CudaReal'
step "cross-check real vs emulated, SDP_CUDA=both" 90 gpu-cross.log env SDP_CUDA=both "$tests" "${topts[@]}" --filter 'TestCategory=CudaCross'

# ---- compute-sanitizer memcheck on the real kernel tests ----
sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1 || true)"
if [ -n "$sanitizer" ]; then
  step "compute-sanitizer memcheck (KernelTests(Real))" 150 memcheck.log env SDP_CUDA=real \
    "$sanitizer" --tool memcheck --target-processes all --error-exitcode 3 \
    "$tests" "${topts[@]}" --filter 'TestCategory=CudaReal&FullyQualifiedName~KernelTests'
else
  echo "compute-sanitizer: not found, memcheck skipped" | tee "$OUT/memcheck.log" | tee -a "$summary"
fi

# ---- NCCL across processes (NcclCommunicator.CreateForProcess), real NCCL on the one card ----
# A one-rank NCCL world (the ranks of the multi-process form always call NCCL, even alone), then two processes
# sharing the card. Real NCCL refuses two ranks of one communicator on one GPU ("Duplicate GPU detected"), unless
# each rank claims its own host (NCCL_HOSTID) and they talk over loopback sockets: the second step tries that.
# Needs Open MPI (mpirun, libmpi.so.40); the GPU image may lack it, then both steps are skipped and say so.
if command -v mpirun > /dev/null 2>&1; then
  mflags=(--oversubscribe --mca btl self,vader --mca btl_vader_single_copy_mechanism none)
  [ "$(id -u)" = 0 ] && mflags+=(--allow-run-as-root)
  step "NCCL one process, one rank (mpirun -np 1 sdp comm-check --transport nccl)" 60 nccl-1.log env SDP_CUDA=real \
    mpirun -np 1 "${mflags[@]}" "$sdp" comm-check --transport nccl --out "$OUT/nccl-1"
  nccl2=(env SDP_CUDA=real NCCL_DEBUG=WARN NCCL_SOCKET_IFNAME=lo NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 "$sdp" comm-check --transport nccl --out "$OUT/nccl-2")
  step "NCCL two processes sharing the card (mpirun -np 2, NCCL_HOSTID per rank)" 90 nccl-2.log \
    mpirun "${mflags[@]}" -np 1 env NCCL_HOSTID=sdp-rank-0 "${nccl2[@]}" : -np 1 env NCCL_HOSTID=sdp-rank-1 "${nccl2[@]}"
else
  echo "NCCL multi-process: mpirun not found (apt-get install openmpi-bin), skipped" | tee "$OUT/nccl-1.log" | tee -a "$summary"
fi

# ---- the main job on the GPU, then the kernel benchmarks (masked matmul vs cuBLAS, accumulation vs copy) ----
step "sdp train --device cuda (README main job, 50 steps)" 120 train.log env SDP_CUDA=real "$sdp" train --device cuda --steps 50
step "sdp bench kernels --device cuda" 150 bench.log env SDP_CUDA=real "$sdp" bench kernels --device cuda --samples 7

echo
echo "== summary ($(( $(date +%s) - start ))s) =="
cat "$summary"
for log in gpu-emu gpu-tests gpu-cross memcheck; do
  [ -f "$OUT/$log.log" ] && grep -E '^\s*(total|failed|succeeded|skipped):|Test run summary' "$OUT/$log.log" | sed "s/^/$log: /"
done
exit "$failed"
