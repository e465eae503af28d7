#!/bin/bash
# `qtool plugins` over the fixture folder: every refusal line is printed,
# the valid fixtures are listed, the exit code is 0, and --json parses.
set -euo pipefail
fx=$1
: "${QTOOL_BIN:?}"
py=${QTOOL_PYTHON:-python3}
export QTOOL_NO_DEFAULT_PLUGINS=1
unset QTOOL_PLUGIN_PATH

fail() { echo "FAIL: $*" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

rc=0
out=$("$QTOOL_BIN" --plugin-path "$fx" plugins 2>"$tmp/err.txt") || rc=$?
[ "$rc" -eq 0 ] || { cat "$tmp/err.txt" >&2; fail "qtool plugins exited $rc"; }
printf '%s\n' "$out"

expect_line() { # a line of the output that starts with "  <text>"
    grep -qF -- "  $1" <<<"$out" || fail "missing line: $1"
}
expect_line "$fx/libbroken.so: not a shared object: "
expect_line "$fx/libnoentry.so: no qtool_plugin_entry symbol"
expect_line "$fx/libnulldesc.so: qtool_plugin_entry returned NULL"
expect_line "$fx/libabi2.so: built for plugin ABI 2.0, this qtool speaks ABI 1.x"
expect_line "$fx/libshort.so: descriptor is 16 bytes, ABI 1 needs at least "
expect_line "$fx/libinitfail.so: init failed: needs the frobnicator"
expect_line "$fx/libdup_b.so: duplicate plugin name 'fixture_dup', already loaded from $fx/libdup_a.so"
expect_line "$fx/libmissingslot.so: missing required slot 'pack'"
expect_line "$fx/libnocuda.so: missing required slot 'matmul_cuda'"
expect_line "$fx/libbadname.so: invalid plugin name 'Bad-Name'"
expect_line "$fx/libbadopt.so: option 'blocksize': default 8 is outside 16..4096"
grep -q '^Refused (11):' <<<"$out" || fail "expected 11 refusals"
for name in fixture_dup fixture_future fixture_old fixture_valid; do
    grep -qE "^$name +" <<<"$out" || fail "plugin $name not listed"
done
grep -qE '^fixture_valid +1\.2\.3 +1\.0 +cpu +8 +32 +no +valid fixture with options$' <<<"$out" ||
    fail "fixture_valid row is wrong"
grep -qE '^  dtype +nf4\|fp4 +nf4 +code book$' <<<"$out" || fail "dtype option row is wrong"
grep -qE '^  blocksize +int +64 +16\.\.4096 +elements per block$' <<<"$out" || fail "blocksize option row is wrong"

rc=0
"$QTOOL_BIN" --plugin-path "$fx" plugins --json >"$tmp/out.json" 2>"$tmp/err.txt" || rc=$?
[ "$rc" -eq 0 ] || { cat "$tmp/err.txt" >&2; fail "qtool plugins --json exited $rc"; }
"$py" - "$fx" "$tmp/out.json" <<'PY'
import json, sys
fx, path = sys.argv[1], sys.argv[2]
doc = json.load(open(path))
assert set(doc) >= {"plugins", "refused"}, doc.keys()
names = [p["name"] for p in doc["plugins"]]
assert names == ["fixture_dup", "fixture_future", "fixture_old", "fixture_valid"], names
v = doc["plugins"][3]
assert v["version"] == "1.2.3" and v["abi"] == "1.0" and v["devices"] == ["cpu"], v
assert v["weight_bits"] == 8 and v["activation_bits"] == 32 and v["needs_calibration"] is False, v
assert v["path"] == fx + "/libvalid.so", v["path"]
opts = {o["name"]: o for o in v["options"]}
assert [o["name"] for o in v["options"]] == ["blocksize", "ratio", "double_quant", "tag", "dtype"]
assert opts["blocksize"] == {"name": "blocksize", "type": "int", "default": 64, "help": "elements per block",
                             "choices": None, "min": 16, "max": 4096}, opts["blocksize"]
assert opts["ratio"]["default"] == 0.5 and opts["ratio"]["type"] == "float"
assert opts["double_quant"]["default"] is True and opts["double_quant"]["min"] is None
assert opts["tag"]["default"] == "" and opts["tag"]["type"] == "string"
assert opts["dtype"]["choices"] == ["nf4", "fp4"] and opts["dtype"]["default"] == "nf4"
refused = {r["path"]: r["reason"] for r in doc["refused"]}
assert len(refused) == 11, refused
assert refused[fx + "/libabi2.so"] == "built for plugin ABI 2.0, this qtool speaks ABI 1.x"
assert refused[fx + "/libinitfail.so"] == "init failed: needs the frobnicator"
assert refused[fx + "/libbroken.so"].startswith("not a shared object: ")
print("json ok")
PY

# Usage errors exit 2; --help exits 0; refusals alone do not fail the command.
rc=0; "$QTOOL_BIN" plugins --bogus >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "unknown option: exit $rc, want 2"
"$QTOOL_BIN" plugins --help | grep -q -- '--json' || fail "--help"
rc=0; out=$("$QTOOL_BIN" --plugin-path "$fx/libbroken.so" plugins) || rc=$?
[ "$rc" -eq 0 ] || fail "only refusals: exit $rc, want 0"
grep -q '^No plugins found' <<<"$out" || fail "no 'No plugins found'"
echo "ok"
