#!/bin/sh
# Installs the callwatch agent as a system service (Linux, systemd), non-interactively.
#
#   sudo packaging/install-agent.sh --collector HOST:PORT --pin HEX [--reflector HOST:PORT]
#        [--reflector-key HEX] [--accept-risks]
#
# `callwatch-agent init` shows what running an agent means and asks you to agree; where
# nobody can answer (a script), --accept-risks says you have read it (`callwatch-agent init --help`).
# Creates the unprivileged user `callwatch`, its state folder /var/lib/callwatch (mode 0700),
# the config and a new signing key there (owner-only), installs the unit and starts it.
# Run it again with --force to replace the config and key (a new key unlinks past reports).
# Expects the binary at /usr/local/bin/callwatch-agent (`cargo install --path agent --root /usr/local`).
set -eu

collector= pin= reflector= reflector_key= force= accept=
bin=/usr/local/bin/callwatch-agent
state=/var/lib/callwatch
unit_dir=/etc/systemd/system
start=yes
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 64; }
while [ $# -gt 0 ]; do
  case "$1" in
    --collector) collector=$2; shift 2 ;;
    --pin) pin=$2; shift 2 ;;
    --reflector) reflector=$2; shift 2 ;;
    --reflector-key) reflector_key=$2; shift 2 ;;
    --force) force=--force; shift ;;
    --accept-risks) accept=--accept-risks; shift ;;
    --bin) bin=$2; shift 2 ;;
    --state-dir) state=$2; shift 2 ;;
    --unit-dir) unit_dir=$2; shift 2 ;;
    --no-start) start=no; shift ;;
    -h|--help) usage ;;
    *) echo "install-agent.sh: unknown option $1" >&2; usage ;;
  esac
done
[ -n "$collector" ] || { echo "install-agent.sh: --collector HOST:PORT is required" >&2; exit 64; }
[ -n "$pin" ] || { echo "install-agent.sh: --pin HEX (the collector's collector.pin) is required" >&2; exit 64; }
[ -x "$bin" ] || { echo "install-agent.sh: $bin not found; cargo install --path agent --root /usr/local" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "install-agent.sh: run as root (it creates a system user)" >&2; exit 1; }

if ! id callwatch >/dev/null 2>&1; then
  useradd --system --home-dir "$state" --no-create-home --shell /usr/sbin/nologin callwatch
fi
install -d -m 0700 -o callwatch -g callwatch "$state"
set -- init --config "$state/agent.toml" --collector "$collector" --pin "$pin"
[ -n "$reflector" ] && set -- "$@" --reflector "$reflector"
[ -n "$reflector_key" ] && set -- "$@" --reflector-key "$reflector_key"
[ -n "$force" ] && set -- "$@" --force
[ -n "$accept" ] && set -- "$@" --accept-risks
# As the service user, so the key and config belong to it (and only it).
su -s /bin/sh callwatch -c "umask 077; \"$bin\" $(printf '"%s" ' "$@")"

here=$(dirname "$0")
sed "s#/usr/local/bin/callwatch-agent#$bin#; s#/var/lib/callwatch/agent.toml#$state/agent.toml#" \
  "$here/callwatch-agent.service" > "$unit_dir/callwatch-agent.service"
chmod 0644 "$unit_dir/callwatch-agent.service"
if [ "$start" = yes ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload
  systemctl enable --now callwatch-agent.service
  echo "callwatch-agent is running: journalctl -u callwatch-agent -f; status: sudo -u callwatch $bin status --config $state/agent.toml"
else
  echo "installed; start it with: systemctl enable --now callwatch-agent.service"
fi
