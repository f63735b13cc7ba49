"""The probe writing to a real VictoriaMetrics through the InfluxDB output: interval
points and the original's per-packet `latency` / per-gap `packet_loss` points."""

import signal
import time

import pytest
from probe import finish, free_port, pf, records, wait_bound, wait_caught  # noqa: E402
from vmserver import BINARY, VMServer  # noqa: E402

pytestmark = [pytest.mark.influx, pytest.mark.skipif(
    BINARY is None, reason="victoria-metrics not installed (make test installs it)")]


def test_probe_to_influx_with_compat_points(tmp_path):
    vm = VMServer(str(tmp_path / "vm"))
    vm.start()
    try:
        port = free_port()
        url = f"http://127.0.0.1:{vm.port}"
        rx = pf("--mode", "receiver", "--local-addr", f"127.0.0.1:{port}", "--duration", 4,
                "--interval", 0.5, "--influx-url", url, "--token", "any", "--compat-points",
                "--spool-dir", tmp_path / "spool", "--output", f"jsonl:{tmp_path / 'rx.jsonl'}")
        wait_bound(port)
        tx = pf("--mode", "sender", "--remote-addr", f"127.0.0.1:{port}", "--rate", 4,
                "--count", 400)
        wait_caught(tx, signal.SIGUSR1)     # its handlers come after its socket and sinks
        time.sleep(0.3)
        tx.send_signal(signal.SIGUSR1)
        finish(tx)
        finish(rx)
        # every interval point: export() polls until all of them are visible (ingestion lags)
        n_points = sum(1 for r in records(tmp_path / "rx.jsonl") if r["type"] == "interval")
        received = vm.export("packet_flow_received", min_samples=n_points)
        assert sum(sum(s["values"]) for s in received) == 400
        tags = received[0]["metric"]
        assert tags["destination"] == f"127.0.0.1:{port}" and len(tags["session"]) == 16
        lost = vm.export("packet_flow_lost", min_samples=n_points)
        assert sum(sum(s["values"]) for s in lost) == 1
        latency = vm.export("latency_value", min_samples=400)
        assert sum(len(s["values"]) for s in latency) == 400
        assert all(0 <= v < 100_000 for s in latency for v in s["values"])
        gaps = vm.export("packet_loss_value", min_samples=1)
        assert [v for s in gaps for v in s["values"]] == [1]
    finally:
        vm.stop()
