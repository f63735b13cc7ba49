"""Coverage-guided fuzzing of the extension's C paths (atheris + libFuzzer + AddressSanitizer).

- The extension is compiled once more, from the same generated C (ext/_io.c, written by the
  normal build), with clang and -fsanitize=address,fuzzer-no-link into a temporary folder;
  the compiler starts niced when the tests are collected (early.py), so its ~10 s pass while
  the tests before this one run.
- tests/fuzz/fuzz_io.py runs against it for FUZZ_SECONDS in all (libFuzzer -max_total_time),
  with atheris' ASan runtime preloaded as atheris documents, starting from the committed seeds
  (tests/fuzz/corpus/io, copied: the run's own corpus stays in the temporary folder).
- Every crash libFuzzer reports is copied into tests/fuzz/crashes/ (commit it: it becomes a
  regression input) and fails the test. Every committed crash and seed is replayed by a plain
  test on the normal build, and under ASan at the start of the fuzz run.
"""

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import early
import numpy
import pytest

from packet_flow import _io

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(HERE)
FUZZ = os.path.join(HERE, "fuzz")
sys.path.insert(0, FUZZ)
import fuzz_io  # noqa: E402

SOURCE = os.path.join(ROOT, "ext", "_io.c")
FUZZ_SECONDS = int(os.environ.get("PF_FUZZ_SECONDS", "30"))   # shorter for a quick local run
SEEDS = sorted(glob.glob(os.path.join(FUZZ, "corpus", "io", "*")))
ARTIFACTS = ("crash-", "leak-", "timeout-", "oom-")   # what libFuzzer names its findings
CRASHES = sorted(p for p in glob.glob(os.path.join(FUZZ, "crashes", "*"))
                 if os.path.basename(p).startswith(ARTIFACTS))


def _asan_launch():
    """The compiler started (niced, so it takes only a core the tests leave idle) on
    packet_flow._io with clang, ASan and libFuzzer's coverage hooks, into a temporary folder
    of its own: (process, path of the module it writes)."""
    so = os.path.join(tempfile.mkdtemp(prefix="pf-asan-"),
                      "_io" + sysconfig.get_config_var("EXT_SUFFIX"))
    cmd = ["nice", "-n", "10", "clang", "-shared", "-fPIC", "-O1", "-gline-tables-only", "-w",
           "-fsanitize=address,fuzzer-no-link", "-D_GNU_SOURCE",
           "-DNPY_NO_DEPRECATED_API=NPY_1_7_API_VERSION",
           "-I" + sysconfig.get_paths()["include"], "-I" + numpy.get_include(),
           "-I" + os.path.join(ROOT, "ext"), SOURCE, "-lcrypto", "-o", so]
    with open(so + ".log", "wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), so


def _asan_wait(launched):
    """The module's path, once the compiler is done."""
    proc, so = launched
    sources = glob.glob(os.path.join(ROOT, "ext", "**", "*.p*"), recursive=True)
    if not os.path.exists(SOURCE) or os.path.getmtime(SOURCE) < max(map(os.path.getmtime, sources)):
        pytest.fail("ext/_io.c is missing or older than ext/: rebuild (pip install -e .)")
    if proc.wait(timeout=300) != 0:
        with open(so + ".log", encoding="utf-8", errors="replace") as f:
            pytest.fail(f"the ASan build failed:\n{f.read()[-4000:]}")
    return so


def _asan_stop(launched):
    proc, so = launched
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    shutil.rmtree(os.path.dirname(so), ignore_errors=True)


early.register("asan-build", _asan_launch, _asan_wait, _asan_stop)


@pytest.mark.parametrize("path", SEEDS + CRASHES, ids=os.path.basename)
def test_committed_inputs_replay(path):
    with open(path, "rb") as f:
        fuzz_io.replay(_io, f.read())


def test_seeds_are_committed():
    assert len(SEEDS) >= 40


@pytest.mark.slow
@pytest.mark.early("asan-build")
def test_atheris_fuzz_with_asan(tmp_path):
    import atheris

    built = early.take("asan-build")
    so = shutil.copy(built, tmp_path)
    shutil.rmtree(os.path.dirname(built))
    corpus = tmp_path / "corpus"
    shutil.copytree(os.path.join(FUZZ, "corpus", "io"), corpus)
    runtime = os.path.join(atheris.path(), "asan_with_fuzzer.so")
    env = dict(os.environ, LD_PRELOAD=runtime,
               ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:quarantine_size_mb=64")
    base = [sys.executable, os.path.join(FUZZ, "fuzz_io.py"), so,
            f"-artifact_prefix={tmp_path}/", f"-max_len={fuzz_io.HEAD + fuzz_io.MAX_DATAGRAM}",
            "-rss_limit_mb=4096", "-print_final_stats=1"]
    if CRASHES:                       # the regressions first, under ASan
        run = subprocess.run(base + ["-runs=0", *CRASHES], env=env, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-4000:]
    run = subprocess.run(base + [f"-max_total_time={FUZZ_SECONDS}", "-timeout=10", str(corpus)],
                         env=env, capture_output=True, text=True, timeout=FUZZ_SECONDS + 120)
    found = [p for p in glob.glob(str(tmp_path / "*")) if os.path.basename(p).startswith(ARTIFACTS)]
    if found:
        os.makedirs(os.path.join(FUZZ, "crashes"), exist_ok=True)
        for p in found:
            shutil.copy(p, os.path.join(FUZZ, "crashes", os.path.basename(p)))
    tail = run.stderr[-4000:]
    assert not found and run.returncode == 0, f"kept in tests/fuzz/crashes: {found}\n{tail}"
    assert "Using preloaded libfuzzer" in run.stderr, tail
    assert "Loaded 1 modules" in run.stderr, tail          # the extension's coverage counters
    assert "Done" in run.stderr and "cov:" in run.stderr, tail
    stats = [line for line in run.stderr.splitlines() if line.startswith("stat::")]
    print("\n".join(stats))
