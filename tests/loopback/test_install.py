"""Installing as README.md says: the build needs it names, `make check-build` / `make run`
on a machine without a C compiler, and the list of Debian packages `make test` installs.

Rules: the README lines checked here are marked with HTML comments (`build-deps`,
`apt-test-packages`); the Makefile and mk/check-build.sh are the sources they must match.
A machine without a compiler is made by running make with a PATH of symlinks that lacks one.
"""

import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def marked_line(tag):
    """The first non-empty, non-fence line after the `<!-- tag: ...-->` comment in README.md."""
    lines = read("README.md").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"<!-- {tag}:"))
    return next(line for line in lines[start + 1:] if line.strip() and not line.startswith("```"))


def test_readme_lists_the_packages_make_test_installs():
    makefile = re.search(r"^APT_TEST_PACKAGES\s*:=\s*(.*)$", read("Makefile"), re.M).group(1)
    listed = marked_line("apt-test-packages").strip().strip("`.").split()
    assert listed == makefile.split(), (
        f"README.md's list after <!-- apt-test-packages --> must be `{makefile.strip()}`.")


def test_readme_build_line_names_every_package_check_build_asks_for():
    script = read("mk/check-build.sh")
    asked = {p for group in re.findall(r'need "?([a-z0-9. -]+?)"? "', script) for p in group.split()}
    line = marked_line("build-deps")
    assert line.startswith("sudo apt-get install -y ")
    assert set(line.split()[4:]) == asked - {"python3"}


def bare_path(tmp_path, tools):
    """A folder of symlinks to `tools` (name -> target): a PATH with nothing else on it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, target in tools.items():
        (bin_dir / name).symlink_to(target)
    return str(bin_dir)


def which(name):
    for d in os.environ["PATH"].split(os.pathsep):
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    raise AssertionError(f"{name} is not installed")


def make(*args, path):
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C"}
    return subprocess.run([which("make"), "-C", ROOT, *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_make_run_without_a_compiler_prints_the_apt_command_and_builds_nothing(tmp_path):
    python = os.path.realpath(sys.executable)
    path = bare_path(tmp_path, {"python3": python, "sh": which("sh"), "id": which("id")})
    venv = tmp_path / "venv"
    for target in ("check-build", "run"):
        r = make(target, f"VENV={venv}", path=path)
        assert r.returncode != 0, r.stdout
        assert "missing: a C compiler (gcc)" in r.stderr
        assert re.search(r"^  (sudo )?apt-get install -y gcc libc6-dev$", r.stderr, re.M), r.stderr
        assert not venv.exists()                # stopped before making the venv


def test_check_build_is_silent_when_everything_is_there():
    r = subprocess.run(["sh", "mk/check-build.sh"], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHON=os.path.realpath(sys.executable)), timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_make_run_probes_loopback_and_ends_pointing_at_report(tmp_path):
    """`make run` as a user runs it, in the test's venv (RUN_INSTALL=true: the package is
    installed there already; a user's `make run` installs it with pip; RUN_SECONDS=1: the
    probe runs 1 s, not 5), then the command it points at."""
    from probe import free_port
    records = tmp_path / "make-run.jsonl"
    env = dict(os.environ)
    env = {k: v for k, v in env.items() if not k.startswith(("PACKET_FLOW_", "MAKE"))}
    r = subprocess.run([which("make"), "-C", ROOT, "run", f"BIN={os.path.dirname(sys.executable)}",
                        "RUN_INSTALL=true", "RUN_SECONDS=1", f"PORT={free_port()}",
                        f"RUN_RECORDS={records}",
                        f"PYTHON={os.path.realpath(sys.executable)}"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"received (\d+)\s+lost 0 ", r.stdout), r.stdout
    hint = r.stdout[r.stdout.index(f"This run's records are in {records}"):].splitlines()
    report = hint[1].strip()
    assert report.endswith(f"packet-flow report {records}")
    assert "pip install -q '.[plot]'" in hint[2] and hint[2].strip().endswith("-o run.png")
    shown = subprocess.run(shlex.split(report), capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "received" in shown.stdout, shown.stderr
