#!/bin/sh
# Makes the certificates docker/compose.yaml's cluster runs with: a CA (and its first
# admin token, ca/admin.token), one node certificate for each coordinator and worker,
# and a client certificate for `docker run` clients. ca/ holds the CA's key: keep it
# off the cluster; the containers get only their own directory.
#
#   docker/certs.sh target/release/drove certs
set -eu
if [ $# -ne 2 ]; then
    echo "usage: $0 DROVE_BINARY OUT_DIR (e.g. $0 target/release/drove certs)" >&2
    exit 2
fi
drove=$1
out=$2
if [ -e "$out" ]; then
    echo "$0: $out exists; remove it or name another directory" >&2
    exit 2
fi
"$drove" cert init --out "$out/ca"
for node in coord1 coord2 coord3 worker1 worker2 worker3; do
    "$drove" cert issue --ca "$out/ca" --name "$node" --out "$out/$node"
done
"$drove" cert issue --ca "$out/ca" --name client --client --out "$out/client"
echo "certificates in $out; the admin token is $out/ca/admin.token"
