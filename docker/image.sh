#!/bin/sh
# Builds a container image of drove from a drove binary and the shared libraries it
# links, with no registry and no base image: the files go into a root filesystem
# that `docker import` turns into an image.
#
#   docker/image.sh target/release/drove drove:latest
set -eu
if [ $# -ne 2 ]; then
    echo "usage: $0 DROVE_BINARY IMAGE_TAG (e.g. $0 target/release/drove drove:latest)" >&2
    exit 2
fi
binary=$1
tag=$2
if [ ! -x "$binary" ]; then
    echo "$0: $binary is not an executable; build it first (cargo build --release -p drove)" >&2
    exit 2
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/data" "$root/tmp" "$root/etc"
chmod 1777 "$root/tmp"
cp "$binary" "$root/usr/local/bin/drove"
# The dynamic loader and every library ldd names, at the paths it names.
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
tar -C "$root" -c . | docker import \
    --change 'ENTRYPOINT ["/usr/local/bin/drove"]' \
    --change 'WORKDIR /data' \
    - "$tag" >/dev/null
echo "built $tag"
