"""What the CLI tests share: where qtool, its plugins and the test
checkpoints are (QTOOL_BIN, QTOOL_PLUGIN_DIR, QTOOL_TEST_DATA, set by
ctest), running qtool with only those plugins, and counting checks in
`failures` (the caller exits 1 when it is not empty)."""
import os
import subprocess

QTOOL = os.environ.get("QTOOL_BIN", "qtool")
PLUGINS = os.environ.get("QTOOL_PLUGIN_DIR", "")
DATA = os.path.join(os.environ.get("QTOOL_TEST_DATA", "tests"), "model", "data")
failures = []


def qtool(*args, plugin_path=None):
    """Runs qtool with the plugins of `plugin_path` (default: the build's) and no others."""
    env = dict(os.environ, QTOOL_NO_DEFAULT_PLUGINS="1")
    return subprocess.run([QTOOL, "--plugin-path", plugin_path or PLUGINS, *args], capture_output=True, text=True,
                          env=env)


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)
    return cond


def model(name):
    """The checkpoint folder of test model `name`."""
    return os.path.join(DATA, name, "model")


def data(name):
    """The evaluation data of test model `name`."""
    return os.path.join(DATA, name, "data.jsonl")
