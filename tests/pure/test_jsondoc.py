"""The JSON document's configuration: every option by its TOML key, secrets masked by field."""

import json

from packet_flow import config
from packet_flow.sinks.jsondoc import config_dict, document
from packet_flow.verdict import Verdict


def test_secrets_are_masked_and_the_rest_is_plain_json(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("pw-from-file\n")
    cfg = config.load(["--mode", "sender", "--influx-url", "http://admin:hunter2@db:8086",
                       "--username", "admin", "--password-file", str(secret),
                       "--token", "tok-123", "--key", "k-456", "--rtt", "--max-loss", "1%"], env={})
    doc = document(config_dict(cfg), [], Verdict(True))
    text = json.dumps(doc)
    for secret_text in ("hunter2", "pw-from-file", "tok-123", "k-456"):
        assert secret_text not in text
    c = doc["config"]
    assert (c["influx_url"], c["token"], c["password"], c["key"], c["username"]) == (
        "http://admin:***@db:8086", "***", "***", "***", "admin")
    assert c["password_file"] == str(secret) and c["max_loss"] == "1%"
    assert c["output"] == ["console", "influx"] and "print_config" not in c
    assert doc["verdict"] == {"passed": True, "status": 0, "judged": 0, "breaches": []}
