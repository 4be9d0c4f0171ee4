// Wi-Fi benchmark (`bun bench/index.ts wifi`, as root). Against the real wpa_supplicant
// (its wired driver on a veth in a namespace of our own, wf-bench: the same control
// interface as with a radio):
//  1. one ctrl_iface request (PING) and one whole "configure a network" (ADD_NETWORK, seven
//     SET_NETWORK, ENABLE_NETWORK, SAVE_CONFIG, REMOVE_NETWORK) through our ffi datagram
//     client; peer: the same commands as one `wpa_cli` process each, which is how
//     shell-driven tools (netconnectd's ifupdown, most setup scripts) talk to it;
//  2. the netconnectd protocol's cost on our control socket: a `status` round trip (connect,
//     JSON+NUL, answer, close) answered from a canned status, so it times the socket, the
//     framing and the JSON, not the daemon gathering its status; no peer.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ControlServer } from "../src/control.ts";
import { createLogger } from "../src/log.ts";
import { formatTable } from "../src/table.ts";
import { answerNetconnectd, encodeNetconnectd } from "../src/uplink/netconnectd.ts";
import { networkCommands, WifiClient, WpaClient } from "../src/uplink/wpa.ts";

const NS = "wf-bench";
const PINGS = 300;
const CONFIGURES = 40;
const PEER_PINGS = 100;
const PEER_CONFIGURES = 10;
const NC_ROUNDS = 300;

async function run(argv: string[], tolerate = false): Promise<string> {
  const p = Bun.spawn(argv, { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0 && !tolerate) throw new Error(`${argv.join(" ")}: exit ${code}: ${err}`);
  return out;
}

function stats(ms: number[]) {
  const s = [...ms].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))]!;
  return { median: q(0.5), p95: q(0.95) };
}
const f = (ms: number) => (ms < 1 ? `${(ms * 1000).toFixed(0)} µs` : `${ms.toFixed(2)} ms`);

async function time(n: number, fn: () => Promise<unknown>): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await fn();
    out.push(performance.now() - t);
  }
  return out;
}

if (process.getuid?.() !== 0) {
  console.log("wifi bench needs root (a namespace for wpa_supplicant's veth)");
  process.exit(1);
}
const dir = mkdtempSync(join(tmpdir(), "agent-wf-bench-"));
let proc: ReturnType<typeof Bun.spawn> | undefined;
let ctl: WpaClient | undefined;
try {
  await run(["ip", "netns", "del", NS], true);
  await run(["ip", "netns", "add", NS]);
  await run(["ip", "netns", "exec", NS, "ip", "link", "add", "wfb0", "type", "veth", "peer", "name", "wfb1"]);
  await run(["ip", "netns", "exec", NS, "ip", "link", "set", "wfb0", "up"]);
  const conf = join(dir, "wpa.conf");
  writeFileSync(conf, `ctrl_interface=${join(dir, "run")}\nupdate_config=1\n`);
  proc = Bun.spawn(["ip", "netns", "exec", NS, "wpa_supplicant", "-i", "wfb0", "-D", "wired", "-c", conf], { stdout: "ignore", stderr: "ignore" });
  const sock = join(dir, "run", "wfb0");
  for (let i = 0; i < 200 && !(await Bun.file(sock).exists()); i++) await Bun.sleep(25);
  ctl = new WpaClient(sock, join(dir, "client"));
  const wifi = new WifiClient(ctl);
  const net = { ssid: "Bench Net", psk: "bench passphrase", priority: 5 };

  const oursPing = await time(PINGS, () => ctl!.request("PING"));
  const oursConf = await time(CONFIGURES, async () => {
    const { id } = await wifi.upsert(net);
    await ctl!.request(`REMOVE_NETWORK ${id}`);
  });
  const cli = (...a: string[]) => run(["wpa_cli", "-p", join(dir, "run"), "-i", "wfb0", ...a]);
  const peerPing = await time(PEER_PINGS, () => cli("ping"));
  const peerConf = await time(PEER_CONFIGURES, async () => {
    // What upsert sends, one wpa_cli process per command (LIST_NETWORKS, ADD, SET…, ENABLE, SAVE, REMOVE).
    await cli("list_networks");
    const id = Number((await cli("add_network")).trim());
    for (const c of networkCommands(id, net)) {
      const [, , key, ...v] = c.split(" ");
      await cli("set_network", String(id), key!, v.join(" "));
    }
    await cli("enable_network", String(id));
    await cli("save_config");
    await cli("remove_network", String(id));
  });

  // The netconnectd protocol on a real control socket (a connection per request, as netconnectd
  // clients do), answered from a canned status: not the daemon's round trip, which also reads
  // the uplinks and wpa_supplicant.
  const log = createLogger({ level: "error", json: false });
  const srv = new ControlServer(join(dir, "control.sock"), log);
  const status = { link: true, devs: ["eth0"], connections: { wifi: false, ap: false, wired: true }, wifi: { current_ssid: null, current_address: null, valid_config: false, present: true } };
  const backend = { netconnectdStatus: () => status } as never;
  srv.nulProtocol(async (t) => encodeNetconnectd(await answerNetconnectd(backend, t)));
  await srv.start();
  const nc = await time(NC_ROUNDS, () => new Promise<void>((resolve, reject) => {
    let got = "";
    Bun.connect({ unix: join(dir, "control.sock"), socket: { open: (s) => void s.write('{"status":{}}\0'), data: (_s, d) => void (got += d.toString()), close: () => (got.endsWith("\0") ? resolve() : reject(new Error("no answer"))) } }).catch(reject);
  }));
  srv.close();

  const [op, cp, pp, pc, n] = [stats(oursPing), stats(oursConf), stats(peerPing), stats(peerConf), stats(nc)];
  console.log(
    formatTable(
      ["OPERATION", "OURS median / p95", "wpa_cli PER COMMAND median / p95", "RATIO (median)"],
      [
        ["one request (PING)", `${f(op.median)} / ${f(op.p95)}`, `${f(pp.median)} / ${f(pp.p95)}`, `${(pp.median / op.median).toFixed(1)}x`],
        ["configure a network (11 requests)", `${f(cp.median)} / ${f(cp.p95)}`, `${f(pc.median)} / ${f(pc.p95)}`, `${(pc.median / cp.median).toFixed(1)}x`],
        ["netconnectd protocol, canned status (socket + framing)", `${f(n.median)} / ${f(n.p95)}`, "- (no peer)", "-"],
      ],
    ),
  );
  console.log(`(${PINGS} / ${CONFIGURES} ours, ${PEER_PINGS} / ${PEER_CONFIGURES} wpa_cli, real wpa_supplicant, wired driver, same run; ${NC_ROUNDS} netconnectd-protocol round trips against a canned status, not the daemon's)`);
} finally {
  ctl?.close();
  proc?.kill();
  await proc?.exited;
  await run(["ip", "netns", "del", NS], true);
  rmSync(dir, { recursive: true, force: true });
}
