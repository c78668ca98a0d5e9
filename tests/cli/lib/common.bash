# Sourced by every tests/cli/*.sh (not a test itself: ctest runs tests/cli/*.sh only), right
# after its header comment and `set -euo pipefail`:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash"
#
# It gives the pieces each test used to copy, so a change to one of them (a new skip reason,
# another variable ctest passes) is made once:
#   bin        the tmdflow binary (TMDFLOW_BIN, required)
#   mpiexec    an array: the launcher and its flags (TMDFLOW_MPIEXEC, e.g. "mpiexec
#              --oversubscribe --bind-to none --allow-run-as-root"), used as "${mpiexec[@]}" -n N
#              (one form in every test: a bare `$mpiexec` would give the launcher without its flags)
#   src        the source tree (TMDFLOW_SOURCE_DIR; else the tree this file is in)
#   OPENBLAS_NUM_THREADS=1 (exported: the ranks share the cores; ctest sets it too, a test run
#              by hand gets it here)
#   fail MSG   prints "FAIL: MSG" and exits 1
#   tmd_workdir NAME         work=$(mktemp -d /tmp/tmdflow-NAME.XXXXXX), removed on exit; a test
#                            that needs more on exit defines tmd_cleanup_hook (called first,
#                            with the exit status as $1; the status is kept)
#   tmd_need_unet            exit 77 (ctest: skipped) without the bundled U-Net model
#   tmd_need_tools CMD...    exit 77 when a command is missing (h5diff, h5ls, h5dump, nm)
#   tmd_test_bin NAME        path of a test program built beside the tests (test_io, ...)
# and h5_same (lib/h5same.bash): the h5diff that also fails on datasets of different shapes.

bin=${TMDFLOW_BIN:?}
read -r -a mpiexec <<< "${TMDFLOW_MPIEXEC:?}"
src=${TMDFLOW_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)}
export OPENBLAS_NUM_THREADS=1

fail() {
    echo "FAIL: $*"
    exit 1
}

tmd_cleanup() {
    local rc=$?
    if declare -F tmd_cleanup_hook > /dev/null; then tmd_cleanup_hook "$rc" || true; fi
    rm -rf "$work"
    return "$rc"
}

tmd_workdir() {
    work=$(mktemp -d "/tmp/tmdflow-$1.XXXXXX")
    trap tmd_cleanup EXIT
}

tmd_need_unet() {
    if [ ! -f "$src/inputs/models/unet.h5" ] && [ ! -f "${TMDFLOW_MODELS:-/nonexistent}/unet.h5" ]; then
        echo "no U-Net model in inputs/models yet: skipped"
        exit 77
    fi
}

tmd_need_tools() {
    local c
    for c in "$@"; do
        command -v "$c" > /dev/null || { echo "$c missing (hdf5-tools / binutils): skipped"; exit 77; }
    done
}

tmd_test_bin() { # ./NAME when ctest runs in the tests build directory, else BUILD/tests/NAME
    if [ -x "./$1" ]; then echo "./$1"; else echo "$(dirname "$bin")/tests/$1"; fi
}

. "$(dirname "${BASH_SOURCE[0]}")/h5same.bash"
