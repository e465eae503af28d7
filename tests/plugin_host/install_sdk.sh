#!/bin/bash
# Installs the build into a temporary prefix, builds the SDK example out of
# tree with CMake (find_package) and with its Makefile (pkg-config), checks
# that the installed qtool lists each build, then installs the example into
# qtool's plugin folder and checks that the installed qtool finds it and
# every installed plugin without any environment variable.
set -euo pipefail
: "${QTOOL_BUILD_DIR:?}" "${QTOOL_SOURCE_DIR:?}"
py=${QTOOL_PYTHON:-python3}
for tool in cmake make cc pkg-config; do
    command -v "$tool" >/dev/null || { echo "skipped: $tool not found"; exit 77; }
done
fail() { echo "FAIL: $*" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
log=$tmp/log.txt
run() { "$@" >"$log" 2>&1 || { cat "$log" >&2; fail "command failed: $*"; }; }

run cmake --install "$QTOOL_BUILD_DIR" --prefix "$prefix"
[ -x "$prefix/bin/qtool" ] || fail "bin/qtool not installed"
[ -f "$prefix/include/qtool/plugin.h" ] || fail "include/qtool/plugin.h not installed"
pc=$(find "$prefix" -name qtool-plugin.pc -path '*/pkgconfig/*' | head -n1)
[ -n "$pc" ] || fail "qtool-plugin.pc not installed"
cfg=$(find "$prefix" -name qtoolConfig.cmake -path '*/cmake/qtool/*' | head -n1)
[ -n "$cfg" ] || fail "qtoolConfig.cmake not installed"
[ -f "$(dirname "$cfg")/qtoolConfigVersion.cmake" ] || fail "qtoolConfigVersion.cmake not installed"
pcdir=$(dirname "$pc")

# pkg-config answers relative to the installed prefix.
incl=$(PKG_CONFIG_PATH=$pcdir pkg-config --cflags qtool-plugin | tr -d "[:space:]")
plugindir=$(PKG_CONFIG_PATH=$pcdir pkg-config --variable=plugindir qtool-plugin)
[ "$(readlink -f "${incl#-I}")" = "$(readlink -f "$prefix/include")" ] || fail "pkg-config --cflags: $incl"
case "$(readlink -m "$plugindir")" in "$(readlink -m "$prefix")"/*/qtool/plugins) ;;
    *) fail "pkg-config plugindir: $plugindir" ;; esac

# Out of tree with CMake.
src=$QTOOL_SOURCE_DIR/sdk/examples/minimal_plugin
run cmake -S "$src" -B "$tmp/cmake-build" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release
run cmake --build "$tmp/cmake-build"
so_cmake=$tmp/cmake-build/libqtool_example_rtn8.so
[ -f "$so_cmake" ] || fail "CMake build made no $so_cmake"

# Out of tree with the Makefile, from a copy of the folder as an author has it.
cp -r "$src" "$tmp/make-build"
rm -rf "$tmp/make-build/build"
run env PKG_CONFIG_PATH="$pcdir" make -C "$tmp/make-build"
so_make=$tmp/make-build/libqtool_example_rtn8.so
[ -f "$so_make" ] || fail "make built no $so_make"

check_listed() { # <qtool plugins --json output file> <expected path of example_rtn8>
    "$py" - "$1" "$2" <<'PY'
import json, os, sys
doc = json.load(open(sys.argv[1]))
found = [p for p in doc["plugins"] if p["name"] == "example_rtn8"]
assert found, "example_rtn8 not listed: %s" % doc
assert os.path.realpath(found[0]["path"]) == os.path.realpath(sys.argv[2]), found[0]["path"]
assert found[0]["devices"] == ["cpu"] and found[0]["weight_bits"] == 8, found[0]
assert [o["name"] for o in found[0]["options"]] == ["clip_ratio"], found[0]["options"]
PY
}
for so in "$so_cmake" "$so_make"; do
    out=$(env -u QTOOL_PLUGIN_PATH "$prefix/bin/qtool" --plugin-path "$so" plugins) ||
        fail "qtool plugins with $so"
    grep -qE '^example_rtn8 +1\.0\.0 +1\.0 +cpu ' <<<"$out" || { echo "$out" >&2; fail "$so not listed"; }
    env -u QTOOL_PLUGIN_PATH QTOOL_NO_DEFAULT_PLUGINS=1 "$prefix/bin/qtool" --plugin-path "$so" plugins --json \
        >"$tmp/one.json" || fail "qtool plugins --json with $so"
    check_listed "$tmp/one.json" "$so" || fail "JSON listing of $so"
done

# Install the CMake-built example where qtool looks (QTOOL_PLUGIN_DIR from
# qtoolConfig.cmake), then run the installed qtool with no plugin variables.
run cmake --install "$tmp/cmake-build"
installed_dir=$(readlink -m "$plugindir")
[ -f "$installed_dir/libqtool_example_rtn8.so" ] || fail "example not installed into $installed_dir"
env -u QTOOL_PLUGIN_PATH -u QTOOL_NO_DEFAULT_PLUGINS "$prefix/bin/qtool" plugins --json >"$tmp/all.json" ||
    fail "installed qtool plugins --json"
check_listed "$tmp/all.json" "$installed_dir/libqtool_example_rtn8.so" || fail "installed example not found"
# Every plugin installed into the prefix loads; none of them is refused.
"$py" - "$tmp/all.json" "$installed_dir" <<'PY'
import json, os, sys
doc = json.load(open(sys.argv[1]))
d = os.path.realpath(sys.argv[2])
loaded = {os.path.realpath(p["path"]) for p in doc["plugins"]}
files = sorted(os.path.join(d, f) for f in os.listdir(d) if f.startswith("lib") and f.endswith(".so"))
missing = [f for f in files if f not in loaded]
refused = [r for r in doc["refused"] if os.path.realpath(r["path"]).startswith(d + os.sep)]
assert not missing and not refused, "installed plugins not loaded: %s; refused: %s" % (missing, refused)
print("installed plugins loaded:", len(files))
PY
echo ok
