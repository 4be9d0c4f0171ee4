// The packet-tunnel benchmark's peers, built from Debian packages in the tunnel lab with a relay
// (test/helpers/tunnel-lab.ts): each carries the laptop's traffic from the master to the LAN
// through the relay namespace, routed (L3), as ours does.
//
//   vtun:    seed 000's own path. vtund clients on the master and the onsite device, each over
//            an stunnel TLS leg to the relay, where vtund makes one TUN per client and the
//            kernel routes between them (ip_forward). No vtun encryption or compression (the
//            TLS leg encrypts, as in seed 000).
//   openvpn: what a user would pick instead. An OpenVPN server on the relay over TCP with
//            `client-to-client`; the onsite client's LAN behind it by `iroute`, the master's
//            route to it pushed. TLS with certificates, its default data cipher.
//
// Either way the master masquerades the laptop into its tunnel and the onsite device
// masquerades into the LAN, as our hosts do, so the rows differ only in the tunnel.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { inNs, nsArgv } from "../../test/helpers/netns.ts";
import { Children } from "../../test/helpers/proc.ts";
import { LAB_RELAY, type TunnelLab } from "../../test/helpers/tunnel-lab.ts";
import { waitFor } from "../../test/helpers/wait.ts";
import { makeTlsFiles } from "./peers.ts";

export interface TunnelPath {
  name: string;
  notes: string;
  /** Processes whose CPU the row reports (the relay side). */
  relayPids: number[];
  stop(): Promise<void>;
}

const LAN = "192.168.1.0/24";

/** nft: masquerade what leaves `oif` (the peer's tunnel on the master, the LAN bridge on the onsite side). */
async function masquerade(ns: string, table: string, oif: string): Promise<void> {
  const script = `table ip ${table} {\n chain post {\n  type nat hook postrouting priority 100;\n  oifname "${oif}" masquerade\n }\n chain forward {\n  type filter hook forward priority 0;\n  tcp flags syn tcp option maxseg size set rt mtu\n }\n}\n`;
  const r = await Bun.spawn(nsArgv(ns, "nft", "-f", "-"), { stdin: new TextEncoder().encode(script), stdout: "pipe", stderr: "pipe" }).exited;
  if (r !== 0) throw new Error(`nft in ${ns} for ${table} failed`);
}
const unmasquerade = (ns: string, table: string) => inNs(ns, ["nft", "delete", "table", "ip", table], true);

const linkUp = async (ns: string, dev: string) => {
  const r = await inNs(ns, ["ip", "-j", "link", "show", dev], true);
  return r.code === 0 && r.stdout.includes('"operstate"');
};

export async function startVtunPath(lab: TunnelLab): Promise<TunnelPath> {
  const dir = mkdtempSync("/tmp/agent-bench-vtun-");
  const kids = new Children();
  const stop = async () => {
    await kids.stopAll();
    await unmasquerade(lab.master, "bench_vtun");
    await unmasquerade(lab.onsite, "bench_vtun");
    for (const [ns, d] of [[lab.master, "vtm0"], [lab.onsite, "vto0"], [lab.relay, "vtrm0"], [lab.relay, "vtro0"]] as const) await inNs(ns, ["ip", "link", "del", d], true);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const tls = await makeTlsFiles(dir);
    await inNs(lab.relay, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    for (const ns of [lab.master, lab.onsite]) await inNs(ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    // vtund writes whatever the far end reads to its TUN at once, and a write to a device that
    // is not up yet fails (EIO) and ends the session: IPv6's router solicitation on the side that
    // came up first did so. No IPv6 on the devices vtund makes.
    for (const ns of [lab.master, lab.onsite, lab.relay]) await inNs(ns, ["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    const ip = "/usr/sbin/ip";
    const session = (name: string, dev: string, local: string, peer: string, route: string) =>
      `${name} {\n passwd benchpass;\n type tun;\n proto tcp;\n device ${dev};\n compress no;\n encrypt no;\n keepalive yes;\n up {\n  program ${"/usr/sbin/ip"} "link set %% mtu 1420 up" wait;\n  program ${"/usr/sbin/ip"} "addr add ${local} peer ${peer} dev %%" wait;\n  program ${"/usr/sbin/ip"} "route add ${route} dev %%" wait;\n };\n}\n`;
    writeFileSync(
      join(dir, "server.conf"),
      `options {\n port 5000;\n ip ${ip};\n bindaddr { addr 127.0.0.1; };\n}\ndefault {\n compress no;\n encrypt no;\n speed 0;\n}\n` +
        session("master", "vtrm0", "10.3.0.1", "10.3.0.2", "10.3.0.0/30") +
        session("onsite", "vtro0", "10.3.1.1", "10.3.1.2", LAN),
    );
    writeFileSync(join(dir, "master.conf"), `options {\n port 5000;\n ip ${ip};\n}\n` + session("master", "vtm0", "10.3.0.2", "10.3.0.1", LAN));
    writeFileSync(join(dir, "onsite.conf"), `options {\n port 5000;\n ip ${ip};\n}\n` + session("onsite", "vto0", "10.3.1.2", "10.3.1.1", "10.3.0.0/30"));
    const stunnel = (label: string, client: boolean, accept: string, connect: string, id: { cert: string; key: string }) => {
      const f = join(dir, `${label}.stunnel`);
      writeFileSync(
        f,
        ["foreground = yes", "pid =", "syslog = no", "debug = 3", "socket = l:TCP_NODELAY=1", "socket = r:TCP_NODELAY=1", "", "[vt]", `client = ${client ? "yes" : "no"}`, `accept = ${accept}`, `connect = ${connect}`, `cert = ${id.cert}`, `key = ${id.key}`, `CAfile = ${tls.ca}`, "verifyChain = yes", "sslVersionMin = TLSv1.3", ""].join("\n"),
      );
      return f;
    };
    const relayVtund = kids.spawn("vtund -s (relay)", nsArgv(lab.relay, "vtund", "-s", "-n", "-f", join(dir, "server.conf")));
    const relayTls = kids.spawn("stunnel (relay)", nsArgv(lab.relay, "stunnel", stunnel("relay", false, "0.0.0.0:5443", "127.0.0.1:5000", tls.server)));
    await waitFor(async () => (await inNs(lab.relay, ["ss", "-ltn"])).stdout.includes(":5443"), 10_000, "stunnel on the relay");
    const all = [relayVtund, relayTls];
    for (const [ns, name] of [[lab.master, "master"], [lab.onsite, "onsite"]] as const) {
      kids.spawn(`stunnel (${name})`, nsArgv(ns, "stunnel", stunnel(name, true, "127.0.0.1:5000", `${LAB_RELAY}:5443`, tls.client)));
      await waitFor(async () => (await inNs(ns, ["ss", "-ltn"])).stdout.includes("127.0.0.1:5000"), 10_000, `stunnel on the ${name}`);
      all.push(kids.spawn(`vtund (${name})`, nsArgv(ns, "vtund", "-n", "-f", join(dir, `${name}.conf`), name, "127.0.0.1")));
    }
    await waitFor(async () => (await linkUp(lab.master, "vtm0")) && (await linkUp(lab.onsite, "vto0")) && (await linkUp(lab.relay, "vtro0")), 15_000, "the vtun devices", {
      detail: () => all.map((c) => `--- ${c.name}\n${c.output()}`).join("\n"),
    });
    await masquerade(lab.master, "bench_vtun", "vtm0");
    await masquerade(lab.onsite, "bench_vtun", "br-lan");
    return { name: "vtun + stunnel (seed 000)", notes: "vtund 3.0.4 tun over TCP, no vtun encryption; stunnel TLS 1.3 legs to the relay, which routes between two TUNs", relayPids: [relayVtund.pid, relayTls.pid], stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

export async function startOpenvpnPath(lab: TunnelLab): Promise<TunnelPath> {
  const dir = mkdtempSync("/tmp/agent-bench-ovpn-");
  const kids = new Children();
  const stop = async () => {
    await kids.stopAll();
    await unmasquerade(lab.master, "bench_ovpn");
    await unmasquerade(lab.onsite, "bench_ovpn");
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const tls = await makeTlsFiles(dir);
    // Two client certificates with their own names (client-config-dir is by common name).
    for (const cn of ["master", "onsite"]) {
      const r1 = await inNs(lab.relay, ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", join(dir, `${cn}.key`), "-out", join(dir, `${cn}.csr`), "-subj", `/CN=${cn}`]);
      void r1;
      writeFileSync(join(dir, `${cn}.ext`), "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n");
      await inNs(lab.relay, ["openssl", "x509", "-req", "-in", join(dir, `${cn}.csr`), "-CA", tls.ca, "-CAkey", join(dir, "ca.key"), "-CAcreateserial", "-out", join(dir, `${cn}.crt`), "-days", "2", "-extfile", join(dir, `${cn}.ext`)]);
    }
    writeFileSync(join(dir, "server.ext"), "extendedKeyUsage=serverAuth\n");
    const ccd = join(dir, "ccd");
    await inNs(lab.relay, ["mkdir", "-p", ccd]);
    writeFileSync(join(ccd, "onsite"), "iroute 192.168.1.0 255.255.255.0\n");
    const common = ["--dev", "tun", "--proto", "tcp", "--tun-mtu", "1420", "--mssfix", "0", "--ca", tls.ca, "--verb", "1", "--data-ciphers", "AES-128-GCM:AES-256-GCM:CHACHA20-POLY1305"];
    const server = kids.spawn(
      "openvpn server (relay)",
      nsArgv(lab.relay, "openvpn", ...common, "--mode", "server", "--tls-server", "--port", "1194", "--local", LAB_RELAY, "--dh", "none", "--cert", tls.server.cert, "--key", tls.server.key, "--topology", "subnet", "--server", "10.4.0.0", "255.255.255.0", "--client-to-client", "--tcp-nodelay", "--client-config-dir", ccd, "--route", "192.168.1.0", "255.255.255.0", "--push", "route 192.168.1.0 255.255.255.0", "--keepalive", "10", "60"),
    );
    await waitFor(async () => (await inNs(lab.relay, ["ss", "-ltn"])).stdout.includes(`${LAB_RELAY}:1194`), 15_000, "openvpn on the relay", { abort: () => (server.running ? undefined : server.failure("openvpn server exited")) });
    for (const [ns, cn] of [[lab.master, "master"], [lab.onsite, "onsite"]] as const) {
      kids.spawn(`openvpn client (${cn})`, nsArgv(ns, "openvpn", ...common, "--client", "--remote", LAB_RELAY, "1194", "--nobind", "--cert", join(dir, `${cn}.crt`), "--key", join(dir, `${cn}.key`), "--dev", "tun", "--route-noexec"));
    }
    await waitFor(async () => (await inNs(lab.master, ["ip", "-4", "-o", "addr", "show", "dev", "tun0"], true)).stdout.includes("10.4.0.") && (await inNs(lab.onsite, ["ip", "-4", "-o", "addr", "show", "dev", "tun0"], true)).stdout.includes("10.4.0."), 20_000, "both OpenVPN clients connected");
    await inNs(lab.master, ["ip", "route", "replace", LAN, "dev", "tun0"]);
    await masquerade(lab.master, "bench_ovpn", "tun0");
    await masquerade(lab.onsite, "bench_ovpn", "br-lan");
    return { name: "OpenVPN TCP client-to-client", notes: "openvpn 2.6 server mode over TCP on the relay, client-to-client, --tcp-nodelay (pushed), TLS certificates, AES-GCM data channel", relayPids: [server.pid], stop };
  } catch (e) {
    await stop();
    throw e;
  }
}
