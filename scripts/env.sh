# Shared by the scripts: find nvcc, pick the build directory and the job count.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
FLASHGDN_BUILD_GPU=${FLASHGDN_BUILD_GPU:-ON}
if [ "$FLASHGDN_BUILD_GPU" = ON ] && ! command -v nvcc >/dev/null 2>&1; then
  echo "error: nvcc not found; install the CUDA toolkit (>= 12.8) or set FLASHGDN_BUILD_GPU=OFF for a host-only build" >&2
  exit 1
fi
configure_and_build() {
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DFLASHGDN_BUILD_GPU="$FLASHGDN_BUILD_GPU" "$@"
  cmake --build "$BUILD_DIR" -j "$JOBS"
}
