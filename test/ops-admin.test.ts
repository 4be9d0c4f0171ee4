// Issue 14 §4, admin actions on the relay, with real processes on 127.0.0.1 (real TLS, a real
// TCP target): `agent kick`, `agent sessions` (every master's) and `agent sessions end` on the
// relay's socket, and session_idle_timeout ending a session with no stream and no packet.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Socket, TCPSocketListener } from "bun";
import { Fleet, type Daemon } from "./helpers/fleet.ts";
import { holdsFor, waitFor } from "./helpers/wait.ts";

interface MasterSession {
  session: string;
  state: string;
  reason: string;
}
interface RelaySession {
  session: string;
  master: string;
  onsite: string;
}

const IDLE_S = 2;

describe("admin actions on the relay", () => {
  let fleet: Fleet;
  let relay: Daemon;
  let onsite: Daemon;
  let master: Daemon;
  let master2: Daemon;
  let echo: TCPSocketListener<undefined>;

  beforeAll(async () => {
    fleet = await Fleet.create();
    echo = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data: (s: Socket<undefined>, d) => void s.write(d) } });
    const cfg = join(fleet.dir, "relay.toml");
    writeFileSync(cfg, `session_idle_timeout = "${IDLE_S}s"\n`);
    relay = await fleet.startRelay("relay-1", ["--config", cfg]);
    onsite = await fleet.startOnsite("site-1", ["--allow", "127.0.0.1/32"]);
    master = await fleet.startMaster("tech-1");
    master2 = await fleet.startMaster("tech-2");
    await Promise.all([onsite, master, master2].map((d) => fleet.waitConnected(d)));
  }, 60_000);

  afterAll(async () => {
    echo?.stop(true);
    await fleet?.close();
  });

  const target = () => `127.0.0.1:${echo.port}`;
  const masterSession = async (m: Daemon, id: string) => (await fleet.json<MasterSession[]>(m, ["sessions"])).find((s) => s.session === id);

  /** A TCP connection through a forward, echoing: its stream stays open until it is closed. */
  async function openStream(port: number): Promise<{ close(): void; echoes(): Promise<boolean> }> {
    let got = "";
    const sock = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data: (_s, d) => void (got += d.toString()) } });
    return {
      close: () => sock.end(),
      async echoes() {
        const word = `ping-${Math.random()}`;
        sock.write(word);
        await waitFor(() => got.includes(word), 5000, "the echo through the session");
        return true;
      },
    };
  }

  test("agent sessions on the relay lists every master's sessions; sessions end ends one, finally", async () => {
    const a = await fleet.connect(master, "site-1", [target()]);
    const b = await fleet.connect(master2, "site-1", [target()]);
    // Streams keep both sessions busy, so the idle timeout plays no part here.
    const sa = await openStream(a.ports[0]!);
    const sb = await openStream(b.ports[0]!);
    await sa.echoes();
    await sb.echoes();
    const listed = await fleet.json<RelaySession[]>(relay, ["sessions"]);
    expect(listed.map((s) => [s.session, s.master, s.onsite]).sort()).toEqual([[a.session, "tech-1", "site-1"], [b.session, "tech-2", "site-1"]].sort());
    const table = await fleet.cli(relay, ["sessions"]);
    expect(table.stdout).toContain("tech-1");
    expect(table.stdout).toContain("tech-2");

    const end = await fleet.cli(relay, ["sessions", "end", a.session, "--reason", "maintenance window"]);
    expect(end.stderr).toBe("");
    expect(end.code).toBe(0);
    expect(end.stdout).toContain(`session ${a.session} (tech-1 → site-1) ended`);
    const closed = await waitFor(async () => {
      const s = await masterSession(master, a.session);
      return s?.state === "closed" ? s : undefined;
    }, 10_000, "the master hears its session ended");
    expect(closed.reason).toContain("ended by the relay operator: maintenance window");
    // Final: the master does not re-open it, and the other master's session is untouched.
    await holdsFor(async () => (await fleet.json<RelaySession[]>(relay, ["sessions"])).some((s) => s.session === a.session), 1500, "the ended session stays ended");
    await sb.echoes();
    sa.close();
    sb.close();

    const again = await fleet.cli(relay, ["sessions", "end", a.session]);
    expect(again.code).toBe(4);
    expect(again.stderr).toContain(`no active session "${a.session}" on this relay`);
    // Where it does not run, it says so.
    const onMaster = await fleet.cli(master, ["sessions", "end", b.session]);
    expect(onMaster.code).toBe(2);
    expect(onMaster.stderr).toContain("runs on the relay");
    await fleet.cli(relay, ["sessions", "end", b.session]);
  }, 60_000);

  test("agent kick closes a device's connection with the reason; it dials again, its sessions resume", async () => {
    const s = await fleet.connect(master, "site-1", [target()]);
    const before = ((await fleet.status(onsite)).onsite as { connects: number }).connects;
    const r = await fleet.cli(relay, ["kick", "site-1", "--reason", "swap the SIM"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^kicked onsite site-1 \(127\.0\.0\.1\); 1 session\(s\) ended\n$/);
    // The device heard why, and came back on its own.
    await waitFor(async () => {
      const o = (await fleet.status(onsite)).onsite as { connects: number; state: string };
      return o.connects > before && o.state === "up";
    }, 20_000, "site-1 reconnects after the kick");
    expect(onsite.log()).toMatch(/relay connection lost: .*kicked by the relay operator: swap the SIM/);
    expect(relay.log()).toContain("onsite site-1 from 127.0.0.1");
    expect(relay.log()).toContain("kicked by the relay operator: swap the SIM");
    // Not final: the master resumes the session once the device is back.
    await waitFor(async () => (await fleet.json<RelaySession[]>(relay, ["sessions"])).some((x) => x.session === s.session), 20_000, "the session re-opened after the kick");
    await fleet.cli(relay, ["sessions", "end", s.session]);

    const json = await fleet.json<{ id: string; role: string }[]>(relay, ["kick", "tech-2"]);
    expect(json).toEqual([expect.objectContaining({ id: "tech-2", role: "master" })]);
    await fleet.waitConnected(master2);

    const none = await fleet.cli(relay, ["kick", "site-404"]);
    expect(none.code).toBe(4);
    expect(none.stderr).toContain('no device or master "site-404" is connected to this relay');
    const noId = await fleet.cli(relay, ["kick"]);
    expect(noId.code).toBe(2);
    expect(noId.stderr).toContain("missing argument ID for agent kick");
  }, 60_000);

  test(`session_idle_timeout (${IDLE_S}s here) ends a session with no stream, not one with an open stream`, async () => {
    const busy = await fleet.connect(master, "site-1", [target()]);
    const stream = await openStream(busy.ports[0]!);
    await stream.echoes();
    const idle = await fleet.connect(master, "site-1", [target()]);
    const ended = await waitFor(async () => {
      const s = await masterSession(master, idle.session);
      return s?.state === "closed" ? s : undefined;
    }, 15_000, "the idle session ends");
    expect(ended.reason).toContain(`idle for ${IDLE_S} s (no stream and no packet; session_idle_timeout)`);
    expect(relay.log()).toContain(`session ${idle.session} closed: idle for ${IDLE_S} s`);
    // The one with a stream open outlives the timeout by far, and still carries bytes.
    await holdsFor(async () => (await masterSession(master, busy.session))?.state !== "active", IDLE_S * 1000 + 1500, "the busy session stays up");
    await stream.echoes();
    // Once its last stream closes, it goes idle too.
    stream.close();
    const later = await waitFor(async () => {
      const s = await masterSession(master, busy.session);
      return s?.state === "closed" ? s : undefined;
    }, 15_000, "the session ends once its stream is gone");
    expect(later.reason).toContain("idle for");
  }, 60_000);
});
