"""Print the peers a PeerSource sees, one JSON line per change, until the time is up or a
SIGTERM: `python watch_peers.py NAME PORT REFRESH SECONDS ENTRY...`. SIGHUP reloads."""

import json
import signal
import sys
import time

from packet_flow.discovery import PeerSource
from packet_flow.peers import Me


def main():
    name, port, refresh, seconds, *entries = sys.argv[1:]
    logging_setup()
    src = PeerSource(entries, Me(name, int(port)), float(refresh)).start()
    signal.signal(signal.SIGHUP, lambda *_: src.reload())
    last, end = None, time.monotonic() + float(seconds)
    while time.monotonic() < end:
        now = src.peers()
        if now is not last:
            print(json.dumps({"t": time.monotonic(), "peers": [p.key for p in now]}),
                  flush=True)
            last = now
        time.sleep(0.02)
    src.close()


def logging_setup():
    import logging
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    main()
