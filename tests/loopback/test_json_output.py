"""`--output json:PATH` and `json:-`: one JSON document at the end of a run, as a script
reads it."""

import json

from probe import free_port, pf, records, summaries

import packet_flow


def run_both(port, *args):
    return pf("--mode", "both", "--local-addr", f"127.0.0.1:{port}", "--remote-addr",
              f"127.0.0.1:{port}", "--rate", 2, "--count", 200, *args)


def test_the_document_holds_config_summaries_and_verdict(tmp_path):
    port, doc_path, jsonl = free_port(), tmp_path / "run.json", tmp_path / "run.jsonl"
    proc = run_both(port, "--key", "hunter2-secret", "--max-loss", "0.5%", "--output",
                    f"json:{doc_path},jsonl:{jsonl}")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    text = doc_path.read_text()
    assert "hunter2" not in text
    doc = json.loads(text)
    assert list(doc) == ["packet_flow", "config", "summaries", "verdict"]
    assert doc["packet_flow"] == packet_flow.__version__
    cfg = doc["config"]
    assert (cfg["key"], cfg["max_loss"], cfg["count"], cfg["output"]) == (
        "***", "0.5%", 200, [f"json:{doc_path}", f"jsonl:{jsonl}"])
    assert cfg["remote_addr"] == f"127.0.0.1:{port}"
    # the same records as the JSON lines, verdict fields included
    lines = records(jsonl)
    assert doc["summaries"] == [r for r in lines if r["type"] == "summary"]
    (flow,) = summaries(doc["summaries"])
    (sender,) = summaries(doc["summaries"], "sender")
    assert (flow["received"], flow["lost"], sender["sent"]) == (200, 0, 200)
    assert flow["verdict"] == "pass" and "verdict" not in sender    # nothing it judges
    assert doc["verdict"] == {"passed": True, "status": 0, "judged": 1, "breaches": []}


def test_json_to_stdout_moves_the_console_and_carries_the_breach(tmp_path):
    port = free_port()
    proc = run_both(port, "--min-received", 201, "--output", "console,json:-")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 3, err
    doc = json.loads(out)                       # stdout is the document alone
    (flow,) = summaries(doc["summaries"])
    line = (f"packet-flow: threshold --min-received 201 breached by {flow['source']} -> "
            f"127.0.0.1:{port}: received 200")
    assert err.splitlines()[-1] == line and "summary" in err     # the console is on stderr
    assert doc["verdict"]["status"] == 3 and doc["verdict"]["breaches"] == flow["breaches"]
    assert doc["verdict"]["breaches"][0]["measured"] == 200


def test_a_path_that_cannot_be_written_is_a_configuration_error(tmp_path):
    proc = pf("--mode", "receiver", "--duration", 1, "--output",
              f"json:{tmp_path}/missing/run.json")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert err == (f"packet-flow: error: option --output: value "
                   f"'json:{tmp_path}/missing/run.json' from cli: folder "
                   f"'{tmp_path}/missing' of '{tmp_path}/missing/run.json' does not exist\n")
    proc = pf("--output", "jsonl:-,json:-")
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2 and "jsonl:- and json:- cannot both go to stdout" in err
