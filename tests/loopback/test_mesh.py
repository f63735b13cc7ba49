"""Names in band and the mesh, end to end: the CLI in subprocesses on loopback addresses,
read back through its JSON-lines output."""

from probe import finish, free_port, pf, records, summaries, wait_bound


def test_a_senders_name_reaches_the_receiver(tmp_path):
    port, rx_out, tx_out = free_port(), tmp_path / "rx.jsonl", tmp_path / "tx.jsonl"
    rx = pf("--mode", "receiver", "--local-addr", f"127.0.0.1:{port}", "--duration", 3,
            "--output", f"jsonl:{rx_out}", env={"NODE_NAME": "receiver-b"})
    wait_bound(port)
    tx = pf("--mode", "sender", "--remote-addr", f"127.0.0.1:{port}", "--rate", 10,
            "--count", 50, "--key", "s3cret", "--output", f"jsonl:{tx_out}",
            env={"NODE_NAME": "sender-a"})
    finish(tx)
    rx.terminate()
    finish(rx)
    (got,) = summaries(records(rx_out))
    (sent,) = summaries(records(tx_out), "sender")
    assert (got["received"], got["lost"], sent["sent"]) == (50, 0, 50)
    assert (got["source_name"], got["destination_name"]) == ("sender-a", "receiver-b")
    assert (sent["source_name"], sent["destination_name"]) == ("sender-a", "127.0.0.1")
    intervals = [r for r in records(rx_out) if r["type"] == "interval"]
    assert intervals and all(r["source_name"] == "sender-a" for r in intervals)
