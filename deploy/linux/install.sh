#!/bin/sh
# Installs the native bacmqtt gateway as a systemd service. Run as root from an unpacked release or a
# git checkout:
#   sudo deploy/linux/install.sh --mqtt-url mqtt://192.0.2.20:1883 [--interface eth0] [--bbmd IP:PORT]
# Steps (each idempotent; re-running upgrades in place and keeps an existing configuration):
#   1. checks Node.js 20 or newer and npm (it does not install Node.js: use your distribution's
#      package or NodeSource);
#   2. copies the application to $PREFIX (/opt/bacmqtt) and runs `npm ci --omit=dev` there;
#   3. writes $ETC_DIR/gateway.yaml (mode 0600, root) unless it exists;
#   4. installs bacmqtt-gateway.service into $UNIT_DIR with the path of this machine's node, then
#      `systemctl daemon-reload` and `systemctl enable --now` (unless --no-start).
# Uninstall: systemctl disable --now bacmqtt-gateway && rm /etc/systemd/system/bacmqtt-gateway.service
#   && systemctl daemon-reload && rm -rf /opt/bacmqtt  (/etc/bacmqtt and /var/lib/bacmqtt hold the
#   configuration and the buffer; remove them too for a clean slate).
# PREFIX, ETC_DIR and UNIT_DIR may be set in the environment (the tests install into a temporary
# folder with --skip-npm --no-systemctl).
set -eu

PREFIX=${PREFIX:-/opt/bacmqtt}
ETC_DIR=${ETC_DIR:-/etc/bacmqtt}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
MIN_NODE_MAJOR=20

mqtt_url=mqtt://127.0.0.1:1883
gateway_id=$(hostname | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9_-]/-/g' | cut -c1-64)
interface=
bbmd=
skip_npm=no
systemctl_calls=yes
start=yes

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --mqtt-url) mqtt_url=$2; shift 2 ;;
    --gateway-id) gateway_id=$2; shift 2 ;;
    --interface) interface=$2; shift 2 ;;
    --bbmd) bbmd=$2; shift 2 ;;
    --skip-npm) skip_npm=yes; shift ;;
    --no-systemctl) systemctl_calls=no; shift ;;
    --no-start) start=no; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
  esac
done

step() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
yaml_string() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/''/g")"; }

source_dir=$(cd "$(dirname "$0")/../.." && pwd)

step "Checking prerequisites"
node_bin=$(command -v node) || die "Node.js is not installed (need $MIN_NODE_MAJOR or newer)"
node_major=$("$node_bin" -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge "$MIN_NODE_MAJOR" ] || die "Node.js $("$node_bin" --version) is too old: need $MIN_NODE_MAJOR or newer"
echo "    node $("$node_bin" --version) at $node_bin"
if [ "$skip_npm" = no ]; then command -v npm >/dev/null || die "npm is not installed"; fi

step "Installing to $PREFIX"
mkdir -p "$PREFIX"
if [ "$(cd "$PREFIX" && pwd)" != "$source_dir" ]; then
  # Application files only: no local state, tests or dependencies (npm ci installs those).
  (cd "$source_dir" && tar -cf - --exclude=./node_modules --exclude=./.git --exclude=./.data \
    --exclude=./test --exclude=./bench --exclude=./coverage --exclude=./.env .) | (cd "$PREFIX" && tar -xf -)
fi
if [ "$skip_npm" = no ]; then
  (cd "$PREFIX" && npm ci --omit=dev --no-audit --no-fund)
fi

step "Configuration in $ETC_DIR"
mkdir -p "$ETC_DIR"
chmod 0755 "$ETC_DIR"
config="$ETC_DIR/gateway.yaml"
if [ -e "$config" ]; then
  echo "    keeping the existing $config"
else
  umask 077
  {
    echo "# bacmqtt gateway settings. Every key, its default and meaning: docs/gateway.md."
    echo "# Environment variables BACMQTT_GATEWAY__<SECTION>__<KEY> override this file."
    echo "gateway_id: $(yaml_string "$gateway_id")"
    echo "mqtt:"
    echo "  url: $(yaml_string "$mqtt_url")"
    echo "  # username: gateway"
    echo "  # password: secret"
    echo "bacnet:"
    echo "  port: 47808"
    [ -n "$interface" ] && echo "  interface: $(yaml_string "$interface")"
    [ -n "$bbmd" ] && echo "  bbmd: $(yaml_string "$bbmd")"
    true
  } >"$config"
  chmod 0600 "$config"
  echo "    wrote $config"
fi

step "systemd unit in $UNIT_DIR"
mkdir -p "$UNIT_DIR"
sed -e "s#^ExecStart=/usr/bin/node --max-old-space-size=256 /opt/bacmqtt/#ExecStart=$node_bin --max-old-space-size=256 $PREFIX/#" \
  -e "s#^WorkingDirectory=/opt/bacmqtt#WorkingDirectory=$PREFIX#" \
  -e "s#^LoadCredential=gateway.yaml:/etc/bacmqtt/gateway.yaml#LoadCredential=gateway.yaml:$config#" \
  "$source_dir/deploy/linux/bacmqtt-gateway.service" >"$UNIT_DIR/bacmqtt-gateway.service"
chmod 0644 "$UNIT_DIR/bacmqtt-gateway.service"

if [ "$systemctl_calls" = yes ]; then
  systemctl daemon-reload
  if [ "$start" = yes ]; then
    systemctl enable --now bacmqtt-gateway.service
    systemctl --no-pager status bacmqtt-gateway.service || true
  else
    systemctl enable bacmqtt-gateway.service
  fi
fi

echo
echo "Configuration: $config  (then: systemctl restart bacmqtt-gateway)"
echo "Logs:          journalctl -u bacmqtt-gateway -f"
echo "Check:         $node_bin $PREFIX/bin/bacmqtt.mjs doctor --config $config"
