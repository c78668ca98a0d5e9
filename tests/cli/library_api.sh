#!/usr/bin/env bash
# Proves the library's public surface follows the project's rules, so that a program linking
# libtmdflow cannot collide with it and a reader finds each module's contract in one place:
#   - every global symbol defined in libtmdflow.a starts with tmd_ (internal helpers shared
#     between the files of a module included);
#   - every public header include/tmd/<module>.h opens with a comment paragraph on the
#     module's role, and declares only tmd_/TMD_ names at file scope;
#   - every module folder src/<module>/ (except the command line) has its public header.
# TMD_TEST_TIMEOUT: 60
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" # bin, mpiexec (array), src, fail, h5_same, tmd_*
tmd_need_tools nm
lib=${TMDFLOW_LIB:?}

bad=$(nm -g --defined-only "$lib" 2> /dev/null | awk 'NF == 3 && $2 ~ /^[TDBRCGSV]$/ {print $3}' | grep -v '^tmd_' | sort -u || true)
[ -z "$bad" ] || fail "global symbols without the tmd_ prefix in $lib: $(echo $bad)"
n=$(nm -g --defined-only "$lib" 2> /dev/null | awk 'NF == 3 && $2 == "T"' | wc -l)
[ "$n" -gt 100 ] || fail "only $n functions found in $lib (nm output not understood?)"

for h in "$src"/include/tmd/*.h; do
  first=$(head -c 3 "$h")
  [ "$first" = "/* " ] || fail "$h does not open with a comment on the module's role"
  # file-scope names: typedef'd types, functions, enum constants and macros
  names=$(sed -e 's://.*$::' "$h" | grep -E '^(typedef .* |} )[A-Za-z_][A-Za-z0-9_]*;|^#define [A-Za-z_]+' \
          | sed -E 's/^#define ([A-Za-z_0-9]+).*/\1/; s/.*[ }*]([A-Za-z_][A-Za-z0-9_]*);.*/\1/' \
          | grep -v -E '^(tmd_|TMD_)' || true)
  [ -z "$names" ] || fail "$h declares names without the tmd_/TMD_ prefix: $(echo $names)"
done

for d in "$src"/src/*/; do
  m=$(basename "$d")
  [ "$m" = cli ] && continue
  [ -f "$src/include/tmd/$m.h" ] || fail "src/$m has no public header include/tmd/$m.h"
done
echo "library_api.sh: $n functions, all symbols and header names prefixed"
