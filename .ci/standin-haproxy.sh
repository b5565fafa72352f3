#!/usr/bin/env bash
# haproxy:2.6 (the stack's edge) for a Docker engine that cannot pull it: the same HAProxy from
# Debian bookworm's package, with the official image's layout (config in
# /usr/local/etc/haproxy, user haproxy; its STOPSIGNAL, SIGUSR1, is in docker-compose.yml), as ../shared/docker/
# setup-engine.sh builds its stand-ins. Does nothing where the image exists or can be pulled.
set -euo pipefail
image=haproxy:2.6
docker image inspect "$image" >/dev/null 2>&1 && exit 0
timeout 60 docker pull -q "$image" >/dev/null 2>&1 && exit 0
mirror=$( { grep -rhoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } \
  | { grep -v security || true; } | awk '{print $2; exit}')
[ -n "$mirror" ] || { echo "no Debian mirror in apt's sources: cannot build $image" >&2; exit 1; }
command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
r=$(mktemp -d)
trap 'rm -rf "$r"' EXIT
echo "building $image from Debian bookworm's haproxy"
debootstrap --variant=minbase --include=haproxy bookworm "$r" "$mirror" >"$r.log" 2>&1 \
  || { tail -20 "$r.log" >&2; exit 1; }
cat > "$r/usr/local/bin/docker-entrypoint.sh" <<'ENTRY'
#!/bin/sh
# as the official image's: options alone run haproxy; haproxy runs in the foreground, master-worker
set -e
[ "${1#-}" != "$1" ] && set -- haproxy "$@"
if [ "$1" = haproxy ]; then
  shift
  set -- haproxy -W -db "$@"
fi
exec "$@"
ENTRY
chmod +x "$r/usr/local/bin/docker-entrypoint.sh"
mkdir -p "$r/usr/local/etc/haproxy" "$r/var/lib/haproxy"
rm -rf "$r/var/lib/apt/lists/"* "$r/var/cache/apt/"*.bin
tar -C "$r" -c . | docker import \
  --change 'USER haproxy' --change 'WORKDIR /var/lib/haproxy' \
  --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
  --change 'CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]' - "$image" >/dev/null
rm -f "$r.log"
echo "built $image"
