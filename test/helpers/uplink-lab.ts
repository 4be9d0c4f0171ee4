// The uplink lab: the namespace topology (./netns.ts) with three uplinks (eth0 and wlan0
// stand-ins, and a cellular one that a fake mmcli brings up), a peer-echo listener standing for
// the relay's port, a real onsite daemon (`agent --role onsite`) in the onsite namespace and a
// traffic watcher in the LAN namespace. Shared by test/uplink-system.test.ts,
// test/uplink-tunnel.test.ts and bench/uplink.bench.ts.
//
// With `relay: true` the relay's port is served by a REAL relay (`agent --role relay`) in the
// relay namespace, with a real master daemon beside it (bundles from the same throwaway CA),
// and the peer echo the watcher uses moves to the next port.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { UplinkReport } from "../../src/uplink/manager.ts";
import { agent, BUN, MAIN, ROOT, tempDir } from "./cli.ts";
import { buildUplinkTopology, nsArgv, startPeerEcho, type Topology } from "./netns.ts";
import { waitFor, withDeadline } from "./wait.ts";

export const RELAY_PORT = 4443;
/** The peer echo's port when a real relay holds RELAY_PORT. */
export const ECHO_PORT_BESIDE_RELAY = 4444;
/** The HTTP server in the LAN namespace of a lab with a real relay (the forward's target). */
export const LAN_HTTP = { port: 8080, body: "hello from the LAN behind site-1" } as const;
export const FIXTURES = join(ROOT, "test", "fixtures", "uplink");

export interface WatchEvent {
  at: number;
  peer?: string;
  err?: string;
}

export interface Lab {
  topo: Topology;
  dir: string;
  control: string;
  daemonLog: string;
  watch: WatchEvent[];
  /** Which uplink (1-based) carried a watch event, from the router's NAT address. */
  via(ev: WatchEvent): number | undefined;
  status(): Promise<UplinkReport>;
  /** First watch event at or after `t` that went through uplink `i`. */
  firstVia(i: number, t: number): WatchEvent | undefined;
  /** The running daemon process (for tests that kill it). */
  daemon(): ReturnType<typeof Bun.spawn>;
  /** Starts the daemon again (after a test killed it); its output goes to `daemonLog`.N. */
  restartDaemon(): ReturnType<typeof Bun.spawn>;
  /** The onsite daemon's log so far (stderr). */
  onsiteLog(): string;
  /** Set with `relay: true`. */
  fleet?: LabFleet;
  close(): Promise<void>;
}

/** The real relay and master of a lab started with `relay: true`. */
export interface LabFleet {
  relayControl: string;
  masterControl: string;
  relayLog(): string;
  masterLog(): string;
  /** The LAN HTTP server's HOST:PORT (answers LAN_HTTP.body). */
  lanHttp: string;
  /** `agent ARGS --json --control SOCK`, parsed; throws with stderr on a non-zero exit. */
  json<T>(control: string, args: string[]): Promise<T>;
}

export interface LabOptions {
  prefix: string;
  /** Extra [tracking] lines for the daemon's config. */
  tracking?: string;
  /** Appended to the daemon's config (further sections, e.g. [ap]). */
  extraConfig?: string;
  /** Top-level keys of the daemon's config (before any section), e.g. heartbeat_interval. */
  topConfig?: string;
  /** Top-level keys for the daemon's config (before any section), e.g. proxy = "…". */
  rootConfig?: string;
  /** Extra lines of the cellular [[uplink]] entry, e.g. keepalive = "5m". */
  cellularConfig?: string;
  /** Extra environment of the daemon. */
  env?: Record<string, string>;
  /** A real relay on RELAY_PORT and a real master, both in the relay namespace. */
  relay?: boolean;
}

/** Starts `agent ARGS` inside a namespace with its stderr in `log`; stopped by the returned cleanup. */
function spawnIn(ns: string, args: string[], log: string, env?: Record<string, string>) {
  const proc = Bun.spawn(nsArgv(ns, BUN, MAIN, ...args), {
    cwd: ROOT,
    stdin: "ignore",
    stdout: Bun.file(log + ".out"),
    stderr: Bun.file(log),
    env: { ...process.env, ...env },
  });
  const stop = async () => {
    proc.kill("SIGTERM");
    const t = setTimeout(() => proc.kill("SIGKILL"), 5000);
    await proc.exited;
    clearTimeout(t);
  };
  return { proc, stop };
}

const readOr = (path: string) => {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return "";
  }
};

async function waitSocket(path: string, proc: { exitCode: number | null }, log: string, what: string): Promise<void> {
  await waitFor(() => existsSync(path), 15_000, `${what}'s control socket ${path}`, {
    every: 50,
    abort: () => (proc.exitCode !== null ? new Error(`${what} exited with ${proc.exitCode}: ${readOr(log)}`) : undefined),
    detail: () => readOr(log),
  });
}

/** Pipes a process's stdout lines to `onLine` until it ends. */
export async function lines(stream: ReadableStream<Uint8Array>, onLine: (l: string) => void): Promise<void> {
  const dec = new TextDecoder();
  let buf = "";
  for await (const chunk of stream) {
    buf += dec.decode(chunk);
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      onLine(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
    }
  }
}

export async function startLab(o: LabOptions): Promise<Lab> {
  const p = o.prefix;
  const tmp = tempDir(`${p}-lab`);
  const dir = tmp.path;
  const cleanups: (() => Promise<void> | void)[] = [() => tmp[Symbol.dispose]()];
  // Every cleanup runs even when one fails; then the failures are reported, not swallowed:
  // a namespace or daemon left behind breaks the next run.
  const close = async () => {
    const errors: string[] = [];
    for (const c of cleanups.splice(0).reverse()) {
      try {
        await c();
      } catch (e) {
        errors.push((e as Error).message);
      }
    }
    if (errors.length) throw new Error(`lab ${p}: cleanup failed:\n${errors.join("\n")}`);
  };
  try {
    const dev = { eth: `${p}eth0`, wlan: `${p}wlan0`, wwan: `${p}wwan0` };
    const topo = await buildUplinkTopology(p, [{ dev: dev.eth }, { dev: dev.wlan }, { dev: dev.wwan, create: false }]);
    cleanups.push(() => topo.teardown());
    // eth0's gateway is learned from the main table, as a DHCP client would install it.
    await topo.ns(topo.onsite, ["ip", "route", "add", "default", "via", topo.uplinks[0]!.gateway, "dev", dev.eth, "metric", "100"]);

    const echoPort = o.relay ? ECHO_PORT_BESIDE_RELAY : RELAY_PORT;
    const echo = startPeerEcho(topo, echoPort);
    cleanups.push(() => echo.stop());
    await echo.ready;

    // A real onsite daemon: bundle from the real PKI commands.
    const ca = join(dir, "ca");
    const issue = [
      ["pki", "init", "--dir", ca],
      ["pki", "issue", "--dir", ca, "--role", "onsite", "--id", "site-1", "--out", join(dir, "site.bundle")],
    ];
    if (o.relay) {
      issue.push(
        ["pki", "issue", "--dir", ca, "--role", "relay", "--id", "relay-1", "--host", topo.relayAddr, "--out", join(dir, "relay.bundle")],
        ["pki", "issue", "--dir", ca, "--role", "master", "--id", "tech-1", "--out", join(dir, "tech.bundle")],
      );
    }
    for (const args of issue) {
      const r = await agent(args);
      if (r.code !== 0) throw new Error(`agent ${args.join(" ")}: ${r.stderr}`);
    }
    let fleet: LabFleet | undefined;
    if (o.relay) {
      // The relay first (the others dial it), then the master beside it in the relay namespace.
      const relayControl = join(dir, "relay.sock");
      const relayLog = join(dir, "relay.log");
      const relay = spawnIn(topo.relay, ["--role", "relay", "--bundle", join(dir, "relay.bundle"), "--listen", `${topo.relayAddr}:${RELAY_PORT}`, "--control", relayControl, "--state-dir", join(dir, "relay-state"), "--log-level", "debug"], relayLog);
      cleanups.push(relay.stop);
      await waitSocket(relayControl, relay.proc, relayLog, "the relay");
      const masterControl = join(dir, "master.sock");
      const masterLog = join(dir, "master.log");
      const master = spawnIn(topo.relay, ["--role", "master", "--bundle", join(dir, "tech.bundle"), "--relay", `${topo.relayAddr}:${RELAY_PORT}`, "--control", masterControl, "--state-dir", join(dir, "master-state"), "--log-level", "debug"], masterLog);
      cleanups.push(master.stop);
      await waitSocket(masterControl, master.proc, masterLog, "the master");
      // A target for forwards: an HTTP server in the LAN namespace.
      const http = Bun.spawn(
        nsArgv(topo.lan, BUN, "-e", `Bun.serve({ hostname: ${JSON.stringify(topo.lanAddr)}, port: ${LAN_HTTP.port}, fetch: () => new Response(${JSON.stringify(LAN_HTTP.body)}) }); console.log("ready");`),
        { stdin: "ignore", stdout: "pipe", stderr: "inherit" },
      );
      cleanups.push(async () => {
        http.kill();
        await http.exited;
      });
      const reader = http.stdout.getReader();
      const { value } = await withDeadline(reader.read(), 15_000, "the HTTP server in the LAN namespace to say ready");
      reader.releaseLock();
      if (!value || !new TextDecoder().decode(value).includes("ready")) throw new Error("the HTTP server in the LAN namespace did not start");
      fleet = {
        lanHttp: `${topo.lanAddr}:${LAN_HTTP.port}`,
        relayControl,
        masterControl,
        relayLog: () => readOr(relayLog),
        masterLog: () => readOr(masterLog),
        async json<T>(control: string, args: string[]) {
          const r = await agent([...args, "--json", "--control", control]);
          if (r.code !== 0) throw new Error(`agent ${args.join(" ")}: exit ${r.code}: ${r.stderr}`);
          return JSON.parse(r.stdout) as T;
        },
      };
    }
    const control = join(dir, "control.sock");
    const cfgPath = join(dir, "agent.toml");
    writeFileSync(
      cfgPath,
      `role = "onsite"
${o.rootConfig ?? ""}
bundle = "${join(dir, "site.bundle")}"
relay = "${topo.relayAddr}:${RELAY_PORT}"
control = "${control}"
state_dir = "${join(dir, "state")}"
log_level = "debug"
${o.topConfig ?? ""}

[[uplink]]
name = "${dev.eth}"
kind = "ethernet"
priority = 10

[[uplink]]
name = "${dev.wlan}"
kind = "wifi"
priority = 20
gateway = "${topo.uplinks[1]!.gateway}"

[[uplink]]
name = "${dev.wwan}"
kind = "cellular"
priority = 30
apn = "internet"
gateway = "${topo.uplinks[2]!.gateway}"
${o.cellularConfig ?? ""}

[tracking]
${o.tracking ?? ""}
${o.extraConfig ?? ""}
`,
      // 0600: it may hold a secret ([ap] passphrase), and the daemon refuses such a file others can read.
      { mode: 0o600 },
    );
    const mm = join(dir, "mmcli");
    mkdirSync(mm);
    const daemonLog = join(dir, "daemon.log");
    const u3 = topo.uplinks[2]!;
    let runs = 0;
    const spawnDaemon = () =>
      Bun.spawn(nsArgv(topo.onsite, BUN, MAIN, "--config", cfgPath), {
        cwd: ROOT,
        stdin: "ignore",
        stdout: Bun.file(daemonLog + (runs ? `.${runs}` : "")),
        stderr: Bun.file(daemonLog + (runs++ ? `.${runs - 1}` : "") + ".err"),
        env: {
          ...process.env,
          PATH: `${FIXTURES}:${process.env.PATH}`,
          FAKE_MMCLI_DIR: mm,
          FAKE_MMCLI_DEV: u3.dev,
          FAKE_MMCLI_PEER: u3.routerDev,
          FAKE_MMCLI_PEER_NS: u3.router,
          FAKE_MMCLI_ADDR: `${u3.addr}/24`,
          FAKE_MMCLI_GW: `${u3.gateway}/24`,
          ...o.env,
        },
      });
    let daemon = spawnDaemon();
    cleanups.push(async () => {
      daemon.kill("SIGTERM");
      const t = setTimeout(() => daemon.kill("SIGKILL"), 5000);
      await daemon.exited;
      clearTimeout(t);
    });

    const watch: WatchEvent[] = [];
    const watcher = Bun.spawn(nsArgv(topo.lan, BUN, join(FIXTURES, "watch.ts"), topo.relayAddr, String(echoPort)), { stdin: "ignore", stdout: "pipe", stderr: "inherit" });
    cleanups.push(async () => {
      watcher.kill();
      await watcher.exited;
    });
    void lines(watcher.stdout, (l) => {
      try {
        watch.push(JSON.parse(l) as WatchEvent);
      } catch {
        // partial line at exit
      }
    });

    const viaOf = (ev: WatchEvent) => {
      const i = topo.uplinks.findIndex((u) => u.routerRelaySide === ev.peer);
      return i < 0 ? undefined : i + 1;
    };
    const lab: Lab = {
      topo,
      dir,
      control,
      daemonLog,
      watch,
      via: viaOf,
      async status() {
        const r = await agent(["uplink", "status", "--json", "--control", control]);
        if (r.code !== 0) throw new Error(`agent uplink status: exit ${r.code}: ${r.stderr}`);
        return JSON.parse(r.stdout) as UplinkReport;
      },
      firstVia(i, t) {
        return watch.find((e) => e.at >= t && viaOf(e) === i);
      },
      daemon: () => daemon,
      restartDaemon: () => (daemon = spawnDaemon()),
      onsiteLog: () => readOr(daemonLog + ".err"),
      fleet,
      close,
    };
    return lab;
  } catch (e) {
    await close();
    throw e;
  }
}

/**
 * Polls `fn` every 50 ms (./wait.ts); returns when it first held (epoch ms, for the printed
 * times). A timeout names what was awaited, the last error and the onsite daemon's log tail.
 */
export async function labUntil(lab: Lab, fn: () => Promise<boolean>, ms: number, what: string): Promise<number> {
  const relay = () => (lab.fleet ? `\n--- relay log tail:\n${lab.fleet.relayLog().slice(-3000)}` : "");
  await waitFor(fn, ms, what, { every: 50, detail: () => `--- onsite log tail:\n${lab.onsiteLog().slice(-3000)}${relay()}` });
  return Date.now();
}

/** Polls the daemon's report until `cond` holds. */
export async function waitReport(lab: Lab, cond: (r: UplinkReport) => boolean, ms: number, what: string): Promise<UplinkReport> {
  let last: UplinkReport | undefined;
  return waitFor(
    async () => {
      last = await lab.status();
      return cond(last) ? last : undefined;
    },
    ms,
    what,
    { every: 100, detail: () => `last report: ${JSON.stringify(last)}` },
  );
}

/** The first switch at or after `t` (epoch ms) to uplink `to`. */
export function switchAfter(r: UplinkReport, t: number, to: string | undefined) {
  return r.history.find((h) => Date.parse(h.at) >= t && h.to === to);
}
