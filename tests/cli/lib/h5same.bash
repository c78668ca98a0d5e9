# Sourced by tests/cli/*.sh (not a test itself: ctest runs tests/cli/*.sh only).
#
# h5_same A.h5 B.h5 OBJECT...  returns 0 iff every OBJECT (a dataset, or a group with everything
# under it) exists in both files with the same datasets, the same shapes and the same values, and
# says on stdout which one differs otherwise. h5diff alone cannot be trusted with this: on two
# datasets of different shapes (e.g. /atoms with one atom more) it prints "Some objects are not
# comparable" and exits 0, on groups and on single datasets alike (HDF5 1.10, checked). So the
# shapes are compared first (h5ls -r, names relative to OBJECT), the values after (h5diff, exit 1
# on a difference, 2 on an error).
h5_same() {
    local a=$1 b=$2 obj sa sb rc
    shift 2
    for obj in "$@"; do
        sa=$(h5ls -r "$a$obj" 2>&1) || { echo "$obj: not in $a"; return 1; }
        sb=$(h5ls -r "$b$obj" 2>&1) || { echo "$obj: not in $b"; return 1; }
        [ "$sa" = "$sb" ] || { echo "$obj: datasets or shapes differ"; { diff <(echo "$sa") <(echo "$sb") | head -6; } || true; return 1; }
        rc=0
        h5diff -q "$a" "$b" "$obj" "$obj" > /dev/null 2>&1 || rc=$?
        [ "$rc" = 0 ] || { echo "$obj: values differ (h5diff exit $rc)"; return 1; }
    done
    return 0
}
