#!/bin/sh
# Builds the Debian packages callwatch-agent and callwatch-collector from this workspace.
#
#   packaging/build-debs.sh [--version V] [--out DIR] [--bin-dir DIR]
#
#   --version V    the packages' version (default: the workspace's, from Cargo.toml)
#   --out DIR      where the .deb files go (default: target/debian)
#   --bin-dir DIR  package the binaries already in DIR instead of running
#                  `cargo build --release -p callwatch-agent -p callwatch-collector`
#
# Needs cargo (unless --bin-dir), dpkg-deb, gzip, objdump and strip (binutils). Each package
# holds the binary (/usr/bin; debug information stripped, as the release profile does), its
# systemd units (/lib/systemd/system), man pages written by the binary's `manpages` command
# (/usr/share/man/man1, gzipped), bash/zsh/fish completions from its `completions` command, a
# commented config under /etc (a conffile) and the maintainer scripts in
# packaging/debian/PACKAGE/. Prints the paths of the two .deb files.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
version='' out='' bin_dir=''
usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-64}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --version) [ $# -ge 2 ] || usage; version=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
    --bin-dir) [ $# -ge 2 ] || usage; bin_dir=$2; shift 2 ;;
    -h | --help) usage 0 ;;
    *) echo "build-debs.sh: unknown option $1" >&2; usage ;;
  esac
done
if [ -z "$version" ]; then
  version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$top/Cargo.toml")
fi
case "$version" in
  [0-9]*) ;;
  *) echo "build-debs.sh: version '$version' must start with a digit" >&2; exit 64 ;;
esac
out=${out:-$top/target/debian}
for tool in dpkg-deb gzip objdump strip; do
  command -v "$tool" >/dev/null 2>&1 || { echo "build-debs.sh: $tool not found" >&2; exit 1; }
done

if [ -z "$bin_dir" ]; then
  (cd "$top" && cargo build --release --locked -p callwatch-agent -p callwatch-collector)
  bin_dir=${CARGO_TARGET_DIR:-$top/target}/release
fi
for b in callwatch-agent callwatch-collector; do
  [ -x "$bin_dir/$b" ] || { echo "build-debs.sh: $bin_dir/$b not found" >&2; exit 1; }
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
arch=$(dpkg --print-architecture)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Depends: the packages holding the shared libraries the binary links (libc6 at the newest
# glibc symbol version it uses), and passwd for the maintainer scripts' useradd/groupadd.
depends() {
  deps=
  for lib in $(objdump -p "$1" | awk '$1 == "NEEDED" { print $2 }'); do
    path=$(ldconfig -p | awk -v l="$lib" '$1 == l { print $NF; exit }')
    [ -n "$path" ] || { echo "build-debs.sh: $1 needs $lib, which is not installed" >&2; exit 1; }
    pkg=$(dpkg -S "$(readlink -f "$path")" 2>/dev/null | sed -n '1s/:.*//p')
    [ -n "$pkg" ] || pkg=$(dpkg -S "$path" | sed -n '1s/:.*//p')
    case " $deps " in *" $pkg "*) ;; *) deps="$deps $pkg" ;; esac
  done
  glibc=$(objdump -T "$1" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
  list=
  for pkg in $deps; do
    case "$pkg" in
      libc6) entry="libc6 (>= $glibc)" ;;
      *) entry=$pkg ;;
    esac
    list="${list:+$list, }$entry"
  done
  echo "$list, passwd"
}

# build PACKAGE DESCRIPTION: the tree in $work/PACKAGE (filled by the caller) becomes a .deb.
build() {
  pkg=$1
  summary=$2
  long=$(cat)
  tree=$work/$pkg
  bin=$tree/usr/bin/$pkg
  install -d -m 0755 "$tree/DEBIAN" "$tree/usr/share/man/man1" \
    "$tree/usr/share/bash-completion/completions" "$tree/usr/share/zsh/vendor-completions" \
    "$tree/usr/share/fish/vendor_completions.d" "$tree/usr/share/doc/$pkg"
  "$bin" manpages "$work/$pkg.man" >/dev/null
  for page in "$work/$pkg.man"/*.1; do
    name=$(basename "$page")
    gzip -9n <"$page" >"$tree/usr/share/man/man1/$name.gz"
  done
  chmod 0644 "$tree/usr/share/man/man1"/*
  "$bin" completions bash >"$tree/usr/share/bash-completion/completions/$pkg"
  "$bin" completions zsh >"$tree/usr/share/zsh/vendor-completions/_$pkg"
  "$bin" completions fish >"$tree/usr/share/fish/vendor_completions.d/$pkg.fish"
  cat >"$tree/usr/share/doc/$pkg/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: callwatch
Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
  for script in postinst prerm postrm; do
    install -m 0755 "$here/debian/$pkg/$script" "$tree/DEBIAN/$script"
  done
  (cd "$tree" && find etc -type f 2>/dev/null | sed 's#^#/#' | sort) >"$tree/DEBIAN/conffiles"
  [ -s "$tree/DEBIAN/conffiles" ] || rm "$tree/DEBIAN/conffiles"
  (cd "$tree" && find . -type f ! -path './DEBIAN/*' | sed 's#^\./##' | sort | xargs md5sum) \
    >"$tree/DEBIAN/md5sums"
  find "$tree/DEBIAN" -type f ! -perm -u+x -exec chmod 0644 {} +
  size=$(du -sk --exclude=DEBIAN "$tree" | cut -f1)
  cat >"$tree/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: callwatch <callwatch@example.invalid>
Installed-Size: $size
Depends: $(depends "$bin")
Section: net
Priority: optional
Homepage: https://example.invalid/callwatch
Description: $summary
$long
CONTROL
  dpkg-deb --build --root-owner-group "$tree" "$out/${pkg}_${version}_$arch.deb" >/dev/null
  echo "$out/${pkg}_${version}_$arch.deb"
}

# --- callwatch-agent ------------------------------------------------------------------------
tree=$work/callwatch-agent
install -d -m 0755 "$tree/usr/bin" "$tree/lib/systemd/system" "$tree/etc/callwatch"
install -m 0755 "$bin_dir/callwatch-agent" "$tree/usr/bin/callwatch-agent"
strip --strip-debug "$tree/usr/bin/callwatch-agent"
sed 's#/usr/local/bin/callwatch-agent#/usr/bin/callwatch-agent#; s#/var/lib/callwatch/agent.toml#/etc/callwatch/agent.toml#; s#^\# Installed by packaging/install-agent.sh.*#\# Installed by the callwatch-agent Debian package; see docs/DEPLOYMENT.md ("Debian packages").#' \
  "$here/callwatch-agent.service" >"$tree/lib/systemd/system/callwatch-agent.service"
chmod 0644 "$tree/lib/systemd/system/callwatch-agent.service"
# The config: packaging/agent.example.toml with every key commented, the notice `init` shows
# first, and the three paths the packaged layout needs (the state folder, not /etc, which the
# service cannot write: the key is replaced there as rotate_key_every says).
{
  cat <<HEAD
# callwatch agent configuration, installed by the callwatch-agent Debian package (a conffile:
# upgrades keep your changes). The service callwatch-agent runs
#   callwatch-agent run --config /etc/callwatch/agent.toml
# as the user callwatch. It is not started until you set the two required keys, collector and
# collector_pin (the collector's operator gives you both), after reading this:
#
HEAD
  "$tree/usr/bin/callwatch-agent" init --help | sed -n '/^Before you run/,$p' | sed 's/^/# /; s/ *$//'
  cat <<HEAD
#
# Then: sudo callwatch-agent check-config --config /etc/callwatch/agent.toml
#       sudo systemctl enable --now callwatch-agent
#       sudo -u callwatch callwatch-agent status --config /etc/callwatch/agent.toml
#
# The signing key (made by the package, owner-only), the queue and the state file live in the
# service's state folder /var/lib/callwatch; keep these three paths.
key_file = "/var/lib/callwatch/agent.key"
queue_dir = "/var/lib/callwatch/queue"
state_file = "/var/lib/callwatch/state.json"

# Every other key, commented, with its default and meaning. A bad value is reported with its
# key, all of them at once, before anything runs.

HEAD
  sed '1,/^$/d; /^# Signing key and queue folder/,/^state_file/d' "$here/agent.example.toml" |
    sed -E 's/^([a-z_]+ = )/# \1/; s/^\[relay_servers\]/# [relay_servers]/'
} >"$tree/etc/callwatch/agent.toml"
chmod 0644 "$tree/etc/callwatch/agent.toml"
build callwatch-agent "volunteer's agent measuring voice-call quality (callwatch)" <<'DESC'
 Runs call tests shaped like WhatsApp, Telegram, Signal and Max calls against a callwatch
 reflector on a randomised schedule within a data budget, signs the reports and uploads them
 to a callwatch collector. Installs a hardened systemd unit (user callwatch), not started
 until /etc/callwatch/agent.toml names a collector and its pin.
DESC

# --- callwatch-collector --------------------------------------------------------------------
tree=$work/callwatch-collector
install -d -m 0755 "$tree/usr/bin" "$tree/lib/systemd/system" "$tree/etc/default"
install -m 0755 "$bin_dir/callwatch-collector" "$tree/usr/bin/callwatch-collector"
strip --strip-debug "$tree/usr/bin/callwatch-collector"
install -m 0644 "$here/callwatch-collector.service" "$here/callwatch-collector.socket" \
  "$tree/lib/systemd/system/"
install -m 0644 "$here/collector.default" "$tree/etc/default/callwatch-collector"
build callwatch-collector "collector and reflector for callwatch voice-call measurements" <<'DESC'
 Receives signed call-quality reports from callwatch agents over QUIC (or TLS over TCP),
 stores and aggregates them (embedded sled store or ClickHouse), runs the UDP reflector agents
 test against and serves the HTTP API and dashboard. Installs a hardened systemd unit (user
 callwatch-collector) and a socket unit that binds the reflector's port 599.
DESC
