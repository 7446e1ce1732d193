#!/usr/bin/env bash
# Builds the emulated CUDA device: build.sh OUTDIR -> OUTDIR/libcudaemu.so (SONAME libcudaemu.so) and
# OUTDIR/cudaemu.h, which the library's nvrtcCompileProgram force-includes and so must sit next to it.
# Compiler: $SDP_CUDAEMU_CXX, else clang++-14, else clang++, else g++ (the same order the library
# uses at run time to compile kernels).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: build.sh OUTDIR}"
cxx="${SDP_CUDAEMU_CXX:-}"
if [ -z "$cxx" ]; then
  for c in clang++-14 clang++ g++; do
    if command -v "$c" > /dev/null 2>&1; then cxx="$c"; break; fi
  done
fi
if [ -z "$cxx" ]; then
  echo "cudaemu: error: no C++ compiler found (set SDP_CUDAEMU_CXX, or as root: apt-get install -y clang-14)" >&2
  exit 1
fi
mkdir -p "$out"
# -fvisibility=hidden: only the CUDA entry points (EXPORT) are visible. The SONAME is what kernel
# modules record as DT_NEEDED, so they bind to the copy .NET already loaded (RTLD_LOCAL).
"$cxx" -std=c++20 -O2 -g -fPIC -shared -fvisibility=hidden -Wall -Wextra -Werror \
  -Wl,-soname,libcudaemu.so -Wl,-z,defs \
  -o "$out/libcudaemu.so.tmp" "$here/cudaemu.cpp" -ldl -lpthread
mv -f "$out/libcudaemu.so.tmp" "$out/libcudaemu.so"
cp -f "$here/cudaemu.h" "$out/cudaemu.h"
echo "cudaemu: built $out/libcudaemu.so with $cxx"
