// The relay and the open-files limit: it runs with its soft limit at the hard one (Bun raises
// it at start), says when that is low, and when descriptors run out anyway (a flood of connections that never start TLS) it stays up,
// keeps serving the devices already connected, and takes new ones once the flood is gone.
import { afterAll, beforeAll, expect, test } from "bun:test";
import net from "node:net";
import { readdirSync } from "node:fs";
import { Fleet } from "./helpers/fleet.ts";
import { waitFor } from "./helpers/wait.ts";
import { cpuSeconds } from "./helpers/proc.ts";

let fleet: Fleet;
let http: ReturnType<typeof Bun.serve>;
const flood: net.Socket[] = [];

beforeAll(async () => {
  fleet = await Fleet.create();
  http = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("still here\n") });
});
afterAll(async () => {
  for (const s of flood) s.destroy();
  http?.stop(true);
  await fleet?.close();
});

async function curl(port: number): Promise<{ code: number; out: string }> {
  const p = Bun.spawn(["curl", "-sS", "--max-time", "10", `http://127.0.0.1:${port}/`], { stdout: "pipe", stderr: "pipe" });
  const [out, code] = await Promise.all([new Response(p.stdout).text(), p.exited]);
  return { code, out };
}

test("the relay runs with the hard open-files limit and warns when it is low", async () => {
  fleet.wrap = ["prlimit", "--nofile=200:8192"];
  const relay = await fleet.startRelay("relay-limit");
  fleet.wrap = [];
  const st = (await fleet.status(relay)).relay as { open_files_limit: number };
  expect(st.open_files_limit).toBe(8192);
  expect(relay.log()).not.toContain("open-files limit is");
  await fleet.stop(relay);
  fleet.wrap = ["prlimit", "--nofile=80:80"];
  const low = await fleet.startRelay("relay-low");
  fleet.wrap = [];
  await waitFor(() => low.log().includes("open-files limit is 80: the relay can hold fewer devices than that"), 5000, "the low-limit warning");
  await fleet.stop(low);
});

/** The share of one core a process used over a window, from /proc/PID/stat (CPU time, not wall speed). */
async function cpuShare(pid: number, windowMs: number): Promise<number> {
  const c0 = cpuSeconds(pid);
  const t0 = performance.now();
  await Bun.sleep(windowMs); // the measuring window itself, not a wait for something to settle
  return (cpuSeconds(pid) - c0) / ((performance.now() - t0) / 1000);
}

test("out of descriptors: the relay pauses accepting instead of spinning, serves the connected devices, and admits new ones after", async () => {
  // A hard limit the relay cannot raise: ~80 descriptors in all.
  fleet.wrap = ["prlimit", "--nofile=80:80"];
  const relay = await fleet.startRelay("relay-fd");
  fleet.wrap = [];
  const onsite = await fleet.startOnsite("site-fd");
  const master = await fleet.startMaster("tech-fd");
  await fleet.waitConnected(onsite);
  await fleet.waitConnected(master);
  const { ports } = await fleet.connect(master, "site-fd", [`127.0.0.1:${http.port}`]);
  expect((await curl(ports[0]!)).out).toBe("still here\n");
  // 150 connections from 30 source addresses (under the per-source cap) that never start TLS.
  await Promise.all(
    Array.from({ length: 150 }, (_, i) =>
      new Promise<void>((resolve) => {
        const s = net.connect({ host: "127.0.0.1", port: fleet.relayPort, localAddress: `127.0.2.${1 + (i % 30)}` });
        flood.push(s);
        s.on("error", () => {});
        s.once("connect", () => resolve());
        s.once("close", () => resolve());
      }),
    ),
  );
  // Nearly out: it stops accepting (issue 17; Bun's accept loop would spin a core on EMFILE).
  await waitFor(async () => ((await fleet.status(relay)).relay as { accepting: boolean }).accepting === false, 10_000, "the relay to pause accepting");
  expect(readdirSync(`/proc/${relay.proc.pid}/fd`).length).toBeGreaterThanOrEqual(72 - 8);
  expect(relay.log()).toContain("out of descriptors (");
  // While paused (the flood holds its descriptors until the 10 s handshake deadline) the relay
  // idles: its CPU time over a 2 s window is a small share of the window (spinning, it is most of it).
  const share = await cpuShare(relay.proc.pid, 2_000);
  console.log(`relay CPU while out of descriptors: ${(share * 100).toFixed(1)} % of a core over 2 s`);
  expect(share).toBeLessThan(0.1);
  // The session set up before the flood still carries traffic.
  const during = await curl(ports[0]!);
  expect(during.out).toBe("still here\n");
  expect(relay.proc.exitCode).toBeNull();
  for (const s of flood.splice(0)) s.destroy();
  // A device that was not connected gets in once descriptors are free again.
  await waitFor(async () => ((await fleet.status(relay)).relay as { accepting: boolean }).accepting, 20_000, "the relay to accept again");
  expect(relay.log()).toContain("descriptors free again");
  const late = await fleet.startOnsite("site-late");
  await fleet.waitConnected(late, 20_000);
  const list = await fleet.json<{ id: string; online: boolean }[]>(relay, ["devices"]);
  expect(list.filter((d) => d.online).map((d) => d.id).sort()).toEqual(["site-fd", "site-late"]);
}, 60_000);

test("a bare TCP connect-and-close (an uplink probe) is counted, not logged as a refusal; garbage still is", async () => {
  const relay = await fleet.startRelay("relay-probe");
  const connectClose = (payload?: string) =>
    new Promise<void>((resolve) => {
      const s = net.connect({ host: "127.0.0.1", port: fleet.relayPort }, () => {
        if (payload) s.end(payload);
        else s.destroy();
      });
      s.on("error", () => resolve());
      s.on("close", () => resolve());
    });
  for (let i = 0; i < 5; i++) await connectClose();
  await waitFor(async () => ((await fleet.status(relay)).relay as { abandoned_handshakes: number }).abandoned_handshakes === 5, 5000, "5 abandoned handshakes counted");
  expect(relay.log()).not.toContain("refused");
  await connectClose("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  await waitFor(() => /refused \(no certificate\) from 127\.0\.0\.1: TLS handshake failed/.test(relay.log()), 5000, () => `garbage to be refused and logged; log: ${relay.log().slice(-1000)}`);
  await fleet.stop(relay);
});
