#!/bin/sh
# Writes the secrets docker-compose.yml reads, with random values, into ./secrets/ (next to
# docker-compose.yml; git-ignored). A secret that already exists is kept, so running it again
# changes nothing; delete a file to make a new value (InfluxDB takes its token and admin
# password only on its first start). Files are mode 0444 (the containers' users must read
# them) inside a 0700 folder (no other user of the host can reach them).
set -eu
DIR=${1:-"$(cd "$(dirname "$0")/.." && pwd)/secrets"}
mkdir -p "$DIR"
chmod 700 "$DIR"
for name in influxdb_token influxdb_admin_password grafana_admin_password; do
    if [ -s "$DIR/$name" ] && ! grep -q CHANGE-ME "$DIR/$name"; then
        echo "kept    $DIR/$name"
        continue
    fi
    rm -f "$DIR/$name"
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/$name"
    chmod 444 "$DIR/$name"
    echo "written $DIR/$name"
done
