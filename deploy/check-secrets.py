"""Refuse to start the compose stack with secrets nobody chose.

Runs as the compose service `check-secrets` (every other service waits for it to exit 0) and
in the tests: `python3 check-secrets.py DIR` checks every file in DIR (/run/secrets in the
container). A secret that is empty, shorter than 12 characters, or still holds the
placeholder CHANGE-ME is named on stderr with what to do, and the exit status is 1.
"""

import os
import sys

MIN_LENGTH = 12
PLACEHOLDER = "CHANGE-ME"


def problems(folder: str) -> list[str]:
    """One line per unusable secret file in `folder`."""
    found = []
    names = sorted(os.listdir(folder))
    if not names:
        return [f"no secrets in {folder}"]
    for name in names:
        with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
            value = f.read().strip()
        if PLACEHOLDER in value:
            why = f"still the placeholder {PLACEHOLDER}"
        elif not value:
            why = "empty"
        elif len(value) < MIN_LENGTH:
            why = f"shorter than {MIN_LENGTH} characters"
        else:
            continue
        found.append(f"secret {name} is {why}: put a random value in ./secrets/{name} "
                     "(sh deploy/make-secrets.sh writes all of them)")
    return found


def main() -> int:
    folder = sys.argv[1] if len(sys.argv) > 1 else "/run/secrets"
    lines = problems(folder)
    for line in lines:
        print("check-secrets: " + line, file=sys.stderr)
    if lines:
        print("check-secrets: refusing to start the packet-flow stack", file=sys.stderr)
        return 1
    print(f"check-secrets: {len(os.listdir(folder))} secrets set")
    return 0


if __name__ == "__main__":
    sys.exit(main())
