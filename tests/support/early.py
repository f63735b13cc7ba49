"""Slow preparations launched as soon as the tests are collected, so that their waiting (a
compiler, a server's start-up) overlaps the tests that run before theirs: the whole suite
must stay under 10 minutes on a 2-core machine.

Rules:
- A preparation is registered under a name as three functions: `launch()` starts child
  processes without waiting for them and returns a handle; `wait(handle)` waits until they
  are ready and returns what the test needs; `stop(handle)` ends them and must do nothing
  the second time.
- A test marked `@pytest.mark.early("NAME")` has it launched when collection ends
  (conftest.py) and gets its result with `take("NAME")` (launched then if it was not: a test
  run alone or under -k still works, only slower). What it took is the test's to stop;
  `finish()` (the session's end) stops every launched preparation all the same.
- Only child processes run early: no thread, no connection, no file of this process comes
  or goes while other tests run (tests/loopback/test_api.py checks that a run leaves the
  process as it found it).
"""

_REGISTERED = {}    # name -> (launch, wait, stop)
_LAUNCHED = {}      # name -> handle


def register(name, launch, wait, stop):
    """Make a preparation available as NAME (see the module rules)."""
    _REGISTERED[name] = (launch, wait, stop)


def begin(name):
    """Launch NAME now (once), if it is registered; a failure is raised by take()."""
    if name in _REGISTERED and name not in _LAUNCHED:
        try:
            _LAUNCHED[name] = _REGISTERED[name][0]()
        except Exception as exc:
            _LAUNCHED[name] = exc


def take(name):
    """NAME's result, once it is ready (launched now if it was not)."""
    begin(name)
    handle = _LAUNCHED[name]
    if isinstance(handle, Exception):
        raise handle
    return _REGISTERED[name][1](handle)


def finish():
    """Stop every launched preparation (see the module rules)."""
    for name, handle in list(_LAUNCHED.items()):
        if not isinstance(handle, Exception):
            _REGISTERED[name][2](handle)
