#!/usr/bin/env bash
# Installs the Debian packages the test suite and the demo use, if any is missing.
# As root it runs apt-get; otherwise it prints the command to run and fails.
set -euo pipefail

packages=(
  ca-certificates git make curl openssl   # build, PKI checks, demo
  qemu-user-static libc6-arm64-cross      # run the arm64 release executable in tests
  iproute2 iptables nftables kmod         # what `agent doctor` looks for on an onsite device
  busybox                                 # OpenWRT's shell (ash), to check the procd init script; udhcpc
  systemd                                 # systemd-analyze and the unit tree, to verify the .service files
  openssh-server openssh-client           # ssh through a forward (tests), ssh -R/-L peer (bench)
  iperf3 stunnel4 socat                   # throughput tests; the stunnel+socat relay peer (bench)
  conntrack                               # NAT: cutting flows of expired rules
  procps util-linux                       # sysctl (AP fence, namespaces), prlimit (relay fd tests)
  dnsmasq-base hostapd wpasupplicant      # access-point fallback and Wi-Fi client
  isc-dhcp-client                         # DHCP client in AP tests
  hyperfine                               # start-up benchmark
  prometheus haproxy                      # promtool check metrics (metrics tests); the PROXY v2 load balancer (relay tests)
  faketime                                # a device without an RTC: certificates judged with a stale clock
  vtun openvpn                            # packet-tunnel benchmark peers (seed 000's vtun, OpenVPN TCP)
  chromium                                # the web GUI's browser tests (playwright-core drives it; nothing is downloaded)
  redis-server                            # relay cluster mode (issue 16): presence and shared state
)

missing=()
for p in "${packages[@]}"; do
  [[ "$p" == \#* ]] && continue
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
