// What the GUI compares each second while a page listens (server.ts DIGEST_MS): a short text of
// what the pages show, so a change is pushed as one "changed" event however many browsers are
// open, and nothing is sent while nothing changes. Counters that move all the time (bytes,
// packets) are left out: they are fetched with the page. Pure.

type Row = Record<string, unknown>;

/** The master's: its live sessions (state, tunnel mode and state, end) and the devices' states. */
export function masterDigest(sessions: readonly Row[], devices: readonly Row[] | null): string {
  const s = sessions
    .filter((x) => x.state !== "closed")
    .map((x) => {
      const t = x.tunnel as Row | undefined;
      return [x.session, x.state, t?.mode ?? "", t?.state ?? "", x.expires ?? ""].join(",");
    });
  const d = (devices ?? []).map((x) => `${x.id},${x.state ?? (x.online ? "online" : "offline")}`);
  return JSON.stringify([s.sort(), d.sort(), devices === null]);
}

/** The relay's: every device's state, the live sessions, the count of refusals. */
export function relayDigest(devices: readonly Row[], sessions: readonly Row[], refusals: number): string {
  const d = devices.map((x) => `${x.id},${x.state ?? (x.online ? "online" : "offline")}`);
  const s = sessions.map((x) => `${x.session},${x.expires ?? ""}`);
  return JSON.stringify([d.sort(), s.sort(), refusals]);
}
