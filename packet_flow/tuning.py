"""Process-wide settings a run changes for its timing, given back when it ends.

Rules:
- A run freezes what exists when it starts (gc.freeze: the cyclic collector's full passes
  then skip the run's long-lived objects instead of stalling a send slot for milliseconds),
  and a run with a sender shortens the switch interval (GIL_SWITCH_S: the sender waits at
  most that long for another thread's GIL at a record tick).
- Both are process-wide and runs may overlap (two API probes in two threads): the first run
  to start saves the setting, the last to end restores it. The switch interval is restored
  to what it was; gc.unfreeze() is called only when nothing was frozen before the first run,
  so a caller's own gc.freeze() is never undone (our objects then stay frozen with theirs).
"""

import gc
import sys
import threading

from packet_flow import defaults

_lock = threading.Lock()
_runs = 0
_senders = 0
_switch = 0.0
_unfreeze = False


def hold(sender: bool) -> None:
    """Freeze the garbage collector's view of what exists now (and shorten the switch
    interval when `sender`) until the last overlapping run calls release()."""
    global _runs, _senders, _switch, _unfreeze
    with _lock:
        if not _runs:
            _unfreeze = gc.get_freeze_count() == 0
        gc.collect()
        gc.freeze()
        _runs += 1
        if sender:
            if not _senders:
                _switch = sys.getswitchinterval()
                # the sender needs the GIL for a moment at every record tick, while the
                # receiver and output threads may hold it; by default a thread waits up to
                # 5 ms for it, which would make the next slots late
                sys.setswitchinterval(defaults.GIL_SWITCH_S)
            _senders += 1


def release(sender: bool) -> None:
    """The end of a run that called hold(sender)."""
    global _runs, _senders
    with _lock:
        _runs -= 1
        if sender:
            _senders -= 1
            if not _senders:
                sys.setswitchinterval(_switch)
        if not _runs and _unfreeze:
            gc.unfreeze()
