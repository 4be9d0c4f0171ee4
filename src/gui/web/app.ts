// The web GUI's page: one small application for a master (status, devices, services, sessions)
// and a relay (fleet, sessions, refusals, nymea). Every action is one POST /api/call/METHOD,
// the role's own API (what `agent ...` calls); live updates come over /api/events (server-sent
// events): on each, the page shown is fetched again. No framework: DOM built with h(), text
// only through textContent (nothing the API answers is ever parsed as HTML).

import { parseDuration } from "../../duration.ts";

type Json = Record<string, any>;
interface Info {
  role: "master" | "relay";
  id: string;
  users: boolean;
  setup: string | null;
  user: string | null;
  csrf: string | null;
  methods: string[];
}

let info: Info;
const main = document.getElementById("main")!;
const banner = document.getElementById("banner")!;
const nav = document.getElementById("nav")!;
const who = document.getElementById("who")!;
/** Per page: state the page keeps between renders (the search text, the ready commands). */
const keep: { search: string; ready: Map<string, { command?: string; url?: string; text: string; session: string }> } = { search: "", ready: new Map() };
let events: EventSource | null = null;
let refreshQueued = false;
let rendering = false;

function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Json = {}, ...kids: (Node | string | null | undefined | false)[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of kids) if (c !== null && c !== undefined && c !== false) el.append(typeof c === "string" ? document.createTextNode(c) : c);
  return el;
}

const pill = (text: string) => h("span", { class: `pill ${text}` }, text);

function kv(rows: [string, unknown][]): HTMLElement {
  const dl = h("dl", { class: "kv" });
  for (const [k, v] of rows) if (v !== undefined && v !== null && v !== "") dl.append(h("dt", {}, k), h("dd", {}, v instanceof Node ? v : String(v)));
  return dl;
}

export function ago(iso: string | null | undefined): string {
  if (!iso) return "never";
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (!Number.isFinite(s)) return String(iso);
  if (s < 60) return `${Math.max(0, s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function left(iso: string | null | undefined): string {
  if (!iso) return "no limit";
  const s = Math.round((Date.parse(iso) - Date.now()) / 1000);
  if (s <= 0) return "expired";
  const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
  return hh ? `${hh} h ${mm} min` : mm ? `${mm} min ${ss} s` : `${ss} s`;
}

function duration(s: number): string {
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  if (s < 172800) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function bytes(n: number | undefined): string {
  if (n === undefined || n === null) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1 << 30) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  return `${(n / (1 << 30)).toFixed(2)} GiB`;
}

async function post(path: string, body: unknown): Promise<Json> {
  const r = await fetch(path, { method: "POST", headers: { "content-type": "application/json", ...(info?.csrf ? { "x-csrf-token": info.csrf } : {}) }, body: JSON.stringify(body ?? {}) });
  const j = (await r.json().catch(() => ({ ok: false, error: `HTTP ${r.status}` }))) as Json;
  if (r.status === 401 && j.login) {
    void boot();
    throw new Error("logged out");
  }
  if (!j.ok) throw new Error(j.error + (j.hint ? ` (${j.hint})` : ""));
  return j;
}

/** One API method of this role, as `agent ...` calls it. */
async function call<T = any>(method: string, req?: Json): Promise<T> {
  return (await post(`/api/call/${method}`, req ?? {})).result as T;
}

const has = (m: string) => info.methods.includes(m);

function flash(text: string, err = false): void {
  const old = document.getElementById("flash");
  old?.remove();
  main.prepend(h("div", { id: "flash", class: err ? "msg err" : "msg", role: err ? "alert" : "status" }, text));
}

async function act(what: () => Promise<unknown>, done?: string): Promise<void> {
  try {
    await what();
    if (done) flash(done);
  } catch (e) {
    flash((e as Error).message, true);
  }
  await render();
}

// ---- pages ----

interface Page {
  title: string;
  render(): Promise<Node[]>;
}

const masterPages: Record<string, Page> = {
  status: { title: "Status", render: masterStatus },
  devices: { title: "Devices", render: masterDevices },
  services: { title: "Services", render: masterServices },
  sessions: { title: "Sessions", render: masterSessions },
};
const relayPages: Record<string, Page> = {
  fleet: { title: "Fleet", render: relayFleet },
  sessions: { title: "Sessions", render: relaySessions },
  refusals: { title: "Refusals", render: relayRefusals },
  status: { title: "Status", render: relayStatus },
};

function pages(): Record<string, Page> {
  return info.role === "relay" ? relayPages : masterPages;
}

function current(): string {
  const p = location.hash.replace(/^#\/?/, "").split("?")[0]!;
  return p in pages() ? p : Object.keys(pages())[0]!;
}

async function masterStatus(): Promise<Node[]> {
  const s = await call("status");
  const m: Json = s.master ?? {};
  const sec: Json | null = m.secondary ?? null;
  const up: Json | null = m.uplink ?? null;
  return [
    h("h1", {}, `Master ${s.id}`),
    h("div", { class: "cards" },
      h("div", { class: "card", id: "status-card" },
        h("h2", {}, "This master"),
        kv([["uptime", duration(s.uptime_s)], ["version", `${s.version} (${s.commit})`], ["started", s.started], ["live sessions", m.sessions]]),
      ),
      h("div", { class: "card", id: "relay-card" },
        h("h2", {}, "Relay connection ", pill(m.state ?? "unknown")),
        kv([["relay", m.relay], ["since", m.since], ["round trip", typeof m.rtt_ms === "number" ? `${m.rtt_ms < 10 ? m.rtt_ms.toFixed(1) : Math.round(m.rtt_ms)} ms` : null], ["last error", m.last_error]]),
      ),
      h("div", { class: "card" },
        h("h2", {}, "Uplink"),
        up ? kv([["interface", up.iface], ["address", up.address], ["gateway", up.gateway]]) : h("p", { class: "muted" }, "not known"),
      ),
      h("div", { class: "card" },
        h("h2", {}, "Secondary interface"),
        sec
          ? h("div", {}, kv([["interface", sec.iface], ["link", sec.present ? (sec.up ? "up" : "down") : "missing"], ["addresses", (sec.addresses ?? []).join(", ")], ["bridge", sec.bridge]]),
              ...(sec.leases ?? []).map((l: Json) => h("div", { class: "muted" }, `${l.address} ${l.hostname || ""} ${l.mac}`)))
          : h("p", { class: "muted" }, "none configured ([tunnel] secondary)"),
      ),
    ),
  ];
}

/** The bind and host of a forward the browser can reach: loopback for a browser on the master, else the address it used. */
function reach(): { bind: string; host: string } {
  const host = location.hostname.replace(/^\[|\]$/g, "");
  if (host === "localhost" || host === "127.0.0.1") return { bind: "127.0.0.1", host: "127.0.0.1" };
  if (/^\d+\.\d+\.\d+\.\d+$/.test(host)) return { bind: host, host };
  return { bind: "0.0.0.0", host };
}

/** A heartbeat's scalar fields (active uplink, signal, last error...) on one line. */
function diagnostics(hb: Json | null | undefined): string | null {
  if (!hb?.payload) return null;
  return Object.entries(hb.payload as Json).filter(([, v]) => v !== null && v !== "" && typeof v !== "object").map(([k, v]) => `${k}=${v}`).join(", ") || null;
}

function deviceMatches(d: Json, q: string): boolean {
  if (!q) return true;
  const text = [d.id, d.hostname, d.location, d.address, d.uplink, d.state, d.online ? "online" : "offline"].join(" ").toLowerCase();
  return q.toLowerCase().split(/\s+/).every((w) => text.includes(w));
}

/** The search box: filters the cards in place (no request), keeps its text across renders. */
function searchBox(target: () => HTMLElement, match: (el: HTMLElement, q: string) => boolean): HTMLInputElement {
  const box = h("input", { type: "search", id: "search", placeholder: "Search location, host, id, address…", value: keep.search, "aria-label": "search" });
  // Each card's text read once (dataset reads of thousands of cards cost more than the match).
  let cards: { el: HTMLElement; text: string }[] | null = null;
  box.addEventListener("input", () => {
    keep.search = box.value;
    cards ??= (Array.from(target().children) as HTMLElement[]).map((el) => ({ el, text: el.dataset.search ?? "" }));
    const words = box.value.toLowerCase().split(/\s+/).filter(Boolean);
    for (const c of cards) {
      const hide = !(words.length === 0 ? true : match === matchSearch ? words.every((w) => c.text.includes(w)) : match(c.el, box.value));
      if (c.el.hidden !== hide) c.el.hidden = hide;
    }
  });
  return box;
}

/** The cards' own search text (data-search) holds every word typed. */
function matchSearch(el: HTMLElement, q: string): boolean {
  return q.toLowerCase().split(/\s+/).every((w) => (el.dataset.search ?? "").includes(w));
}

async function masterDevices(): Promise<Node[]> {
  const [devices, services] = await Promise.all([call<Json[]>("devices"), has("services") ? call<Json[]>("services").catch(() => []) : Promise.resolve([])]);
  devices.sort((a, b) => Number(b.online) - Number(a.online) || String(a.location).localeCompare(String(b.location)));
  const list = h("div", { class: "cards", id: "devices" });
  for (const d of devices) {
    const state = d.state ?? (d.online ? "online" : "offline");
    const svc = services.filter((s) => s.device === d.id);
    const card = h("div", { class: `card device ${d.online ? "online" : "offline"}`, "data-id": d.id, "data-search": [d.id, d.hostname, d.location, d.address, d.uplink, state].join(" ").toLowerCase() },
      h("div", { class: "loc" }, d.location || "(no location)"),
      h("div", { class: "id" }, d.id, " ", pill(state)),
      kv([
        ["host", d.hostname],
        ["public address", d.address],
        ["uplink", d.uplink],
        ["status", d.status],
        ["heartbeat", d.heartbeat ? `${ago(d.heartbeat.at)}${d.heartbeat.via ? ` via ${d.heartbeat.via}` : ""}` : null],
        ["diagnostics", diagnostics(d.heartbeat)],
        ["certificate expires", d.cert_expires],
        ["round trip", typeof d.rtt_ms === "number" ? `${d.rtt_ms < 10 ? d.rtt_ms.toFixed(1) : Math.round(d.rtt_ms)} ms` : null],
        ["last seen", d.online ? "now" : ago(d.last_seen)],
      ]),
      svc.length ? h("div", {}, ...svc.map((s) => serviceRow(s))) : null,
      h("div", { class: "row" }, h("button", { onclick: () => connectDialog(d), disabled: !d.online, class: "connect" }, "Connect…")),
    );
    card.hidden = !deviceMatches(d, keep.search);
    list.append(card);
  }
  return [
    h("h1", {}, `Devices (${devices.filter((d) => d.online).length} online of ${devices.length})`),
    searchBox(() => list, matchSearch),
    devices.length ? list : h("p", { class: "muted" }, "The relay lists no device for this master."),
  ];
}

function connectDialog(d: Json): void {
  document.getElementById("flash")?.remove();
  const forwards = h("textarea", { name: "forwards", rows: 3, placeholder: "8080:192.168.1.1:80 (one a line)" });
  const mode = h("select", { name: "tunnel" }, h("option", { value: "" }, "no packet tunnel"), h("option", { value: "routed" }, "routed tunnel (TUN)"), h("option", { value: "bridged" }, "bridged tunnel (TAP)"));
  const ttl = h("input", { name: "ttl", type: "number", min: 1, value: 60 });
  const dlg = h("dialog", { id: "connect-dialog" });
  const form = h("form", { class: "stack", method: "dialog" },
    h("h2", {}, `Connect to ${d.location || d.id}`),
    h("div", { class: "id" }, `${d.id} · ${d.hostname || ""} · ${d.address || ""}`),
    h("label", {}, "Port forwards (LPORT:HOST:PORT, one a line)", forwards),
    h("label", {}, "Packet tunnel", mode),
    h("label", {}, "Time to live (minutes)", ttl),
    h("div", { class: "row" }, h("button", { type: "submit", value: "ok", id: "connect-ok" }, "Connect"), h("button", { type: "submit", value: "cancel", class: "ghost" }, "Cancel")),
  );
  dlg.append(form);
  document.body.append(dlg);
  dlg.addEventListener("close", () => {
    dlg.remove();
    if (dlg.returnValue !== "ok") return;
    const fw = forwards.value.split(/\s+/).filter(Boolean);
    const req: Json = { onsite: d.id, forwards: fw, ttl: Number(ttl.value) > 0 ? Number(ttl.value) * 60_000 : null };
    if (mode.value) req.tunnel = mode.value;
    void act(async () => {
      const s = await call("connect", req);
      location.hash = "#/sessions";
      return s;
    }, "session opened");
  });
  dlg.showModal();
}

function serviceRow(s: Json): HTMLElement {
  const ready = keep.ready.get(`${s.device}/${s.name}`);
  const row = h("div", { class: "svc", "data-service": s.name },
    h("b", {}, s.name),
    h("span", { class: "muted" }, `${s.kind} · ${s.target}`),
    h("button", { class: "open", disabled: !s.online, onclick: () => void openService(s) }, s.offer?.action === "tab" ? "Open" : "Forward"),
    has("natAdd") ? h("button", { class: "ghost grant", disabled: !s.online, onclick: () => grantDialog({ device: s.device, name: s.name, target: s.target }) }, "Timed access…") : null,
  );
  if (!ready) return row;
  const out = h("div", { class: "msg ready" });
  if (ready.command) out.append("Run: ", h("code", {}, ready.command));
  else if (ready.url) out.append("Open: ", h("a", { href: ready.url, target: "_blank", rel: "noopener" }, ready.url));
  else out.append(ready.text);
  out.append(h("span", { class: "muted" }, ` (session ${ready.session})`));
  return h("div", {}, row, out);
}

/** Opens a forward to the service (a session of its own) and, for http/https, the page in a new tab. */
async function openService(s: Json): Promise<void> {
  const r = reach();
  const tab = s.offer?.action === "tab" ? window.open("about:blank", "_blank") : null;
  try {
    const forward = s.offer?.forward ?? `0:${s.target}`;
    const session = await call("connect", { onsite: s.device, forwards: [`${r.bind}:${forward}`], ttl: 3600_000 });
    const port = session.forwards?.[0]?.port;
    const fill = (t: string | null) => (t ?? "").replaceAll("{port}", String(port)).replaceAll("127.0.0.1", r.host);
    const url = fill(s.offer?.url) || `${s.kind === "https" ? "https" : "http"}://${r.host}:${port}/`;
    if (tab) tab.location.href = url;
    const action = s.offer?.action;
    keep.ready.set(`${s.device}/${s.name}`, {
      session: session.session,
      text: `Forwarded: ${r.host}:${port} → ${s.target}`,
      ...(action === "command" && s.offer.command ? { command: fill(s.offer.command) } : {}),
      ...(action === "url" || action === "tab" ? { url } : {}),
    });
    flash(`${s.name}: forward ${r.host}:${port} → ${s.target} open`);
  } catch (e) {
    tab?.close();
    flash(`${s.name}: ${(e as Error).message}`, true);
  }
  await render();
}

/** What a timed-access grant is for: a service of a device, or any target through a session already open. */
interface GrantTarget {
  device: string;
  name: string;
  target: string;
  session?: string;
}

/** Seed 001's flow: this browser's public address may reach the service through the device's DNAT for a time. */
function grantDialog(s: GrantTarget): void {
  document.getElementById("flash")?.remove();
  const dur = h("input", { name: "duration", value: "30m", placeholder: "30m, 2h, 90s" });
  const port = h("input", { type: "number", min: 1, max: 65535, name: "port", value: String(s.target).split(":").pop() });
  const to = h("input", { name: "to", value: s.target, placeholder: "192.168.1.10:443" });
  const dlg = h("dialog", { id: "grant-dialog" });
  dlg.append(h("form", { class: "stack", method: "dialog" },
    h("h2", {}, `Timed access: ${s.name}`),
    h("p", { class: "muted" }, "The device forwards its public port to the target, for this master's public address only, until the time runs out; the rule is the session's and ends with it."),
    h("label", {}, "Public port on the device", port),
    h("label", {}, "Target (HOST:PORT on the device's LAN)", to),
    h("label", {}, "For (a duration: 30m, 2h, 90s)", dur),
    h("div", { class: "row" }, h("button", { type: "submit", value: "ok", id: "grant-ok" }, "Grant"), h("button", { type: "submit", value: "cancel", class: "ghost" }, "Cancel")),
  ));
  document.body.append(dlg);
  dlg.addEventListener("close", () => {
    dlg.remove();
    if (dlg.returnValue !== "ok") return;
    void act(async () => {
      const ms = parseDuration(dur.value.trim());
      // A NAT request rides a session to the device: the one given, or one with a forward to the target itself.
      const session = s.session ?? (await call("connect", { onsite: s.device, forwards: [`127.0.0.1:0:${to.value.trim()}`], ttl: ms + 60_000 })).session;
      // The master keeps the grant (natList): every browser, and this one after a reload, lists it.
      await call("natAdd", { session, port: port.value, to: to.value.trim(), ttl: dur.value.trim(), label: s.name });
      location.hash = "#/sessions";
    }, `timed access to ${s.name} granted`);
  });
  dlg.showModal();
}

async function masterServices(): Promise<Node[]> {
  if (!has("services")) return [h("h1", {}, "Services"), h("p", { class: "muted" }, "This master does not serve a service catalogue.")];
  const services = await call<Json[]>("services");
  const list = h("div", { class: "cards", id: "services" });
  const byDevice = new Map<string, Json[]>();
  for (const s of services) byDevice.set(s.device, [...(byDevice.get(s.device) ?? []), s]);
  for (const [device, items] of byDevice) {
    list.append(h("div", { class: `card ${items[0]!.online ? "online" : "offline"}`, "data-search": items.map((s) => `${s.name} ${s.kind} ${s.target} ${s.location} ${device}`).join(" ").toLowerCase() },
      h("div", { class: "loc" }, items[0]!.location || "(no location)"),
      h("div", { class: "id" }, device, " ", pill(items[0]!.online ? "online" : "offline")),
      ...items.map((s) => serviceRow(s)),
    ));
  }
  return [
    h("h1", {}, `Services (${services.length})`),
    searchBox(() => list, matchSearch),
    services.length ? list : h("p", { class: "muted" }, "No device advertises a service ([[service]] in its config), and this master lists none of its own."),
  ];
}

async function masterSessions(): Promise<Node[]> {
  const sessions = (await call<Json[]>("sessions")).filter((s) => s.state !== "closed");
  // Timed-access grants: the master's list (natList), not this page's memory.
  const held: Json[] = has("natList") ? ((await call<Json>("natList")).rules ?? []) : [];
  const r = reach();
  const list = h("div", { class: "cards", id: "sessions" });
  for (const s of sessions) {
    const t: Json | undefined = s.tunnel;
    const card = h("div", { class: "card session", "data-session": s.session },
      h("div", { class: "loc" }, s.onsite),
      h("div", { class: "id" }, s.session, " ", pill(s.state), t ? " " : "", t ? pill(t.mode) : ""),
      kv([
        ["opened", ago(s.opened)],
        ["time left", h("span", { class: "countdown", "data-expires": s.expires ?? "" }, left(s.expires))],
        ["tunnel", t ? `${t.mode}, ${t.state}${t.reason ? ` (${t.reason})` : ""}` : null],
        ["tunnel traffic", t?.packets ? traffic(s.session, t.packets) : null],
        ["subnets", t?.subnets?.join(", ")],
      ]),
      ...(s.forwards ?? []).map((f: Json) =>
        h("div", { class: "svc forward" }, h("b", {}, `${f.bind}:${f.port} → ${f.target}`), h("span", { class: "muted" }, `${f.proto ?? "tcp"} · ${f.connections} conn., ${f.active} open${f.errors ? `, ${f.errors} errors` : ""}`),
          f.proto === "udp" ? null : h("a", { href: `http://${f.bind === "127.0.0.1" || f.bind === "0.0.0.0" ? r.host : f.bind}:${f.port}/`, target: "_blank", rel: "noopener", class: "muted" }, "open")),
      ),
      ...(s.warnings ?? []).map((w: string) => h("div", { class: "msg err" }, w)),
      h("div", { class: "row" },
        t && has("tunnelMode") ? h("button", { class: "ghost switch", onclick: () => act(() => call("tunnelMode", { session: s.session, mode: t.mode === "routed" ? "bridged" : "routed" }), "tunnel switched") }, `Switch to ${t.mode === "routed" ? "bridged" : "routed"}`) : null,
        has("sessionsExtend") ? h("button", { class: "ghost extend", onclick: () => act(() => call("sessionsExtend", { session: s.session, ttl: Math.max(0, Date.parse(s.expires ?? "") - Date.now() || 0) + 3600_000 }), "extended by 1 h") }, "+1 h") : null,
        has("natAdd") ? h("button", { class: "ghost grant", onclick: () => grantDialog({ device: s.onsite, name: s.onsite, target: s.forwards?.[0]?.target ?? "", session: s.session }) }, "Timed access…") : null,
        h("button", { class: "danger disconnect", onclick: () => act(() => call("disconnect", { session: s.session }), "disconnected") }, "Disconnect"),
      ),
    );
    list.append(card);
  }
  const grants = h("div", { id: "grants" });
  for (const g of held) {
    const expires = new Date(Date.now() + (Number(g.remaining_ms) || 0)).toISOString();
    const gone = g.state === "expired";
    grants.append(h("div", { class: "card grant" + (gone ? " offline" : ""), "data-rule": g.id ?? "" },
      h("b", {}, `${g.label && g.label !== g.onsite ? g.label : g.to} on ${g.onsite}`), " ", pill(gone ? "expired" : "active"),
      kv([["public port", g.port], ["to", g.to], ["from", g.src], ["expires", expires], ["time left", h("span", { class: "countdown", "data-expires": expires }, left(expires))]]),
      gone || !has("natDel") ? null : h("div", { class: "row" }, h("button", { class: "danger revoke", onclick: () => act(() => call("natDel", { id: g.id }), "timed access revoked") }, "Revoke")),
    ));
  }
  return [
    h("h1", {}, `Sessions (${sessions.length})`),
    sessions.length ? list : h("p", { class: "muted", id: "no-sessions" }, "No session. Open one from Devices or Services."),
    ...(held.length ? [h("h2", {}, "Timed access"), grants] : []),
  ];
}

/** A tunnel's byte counts, refreshed in place while the sessions page shows (refreshTraffic). */
function traffic(session: string, p: Json): HTMLElement {
  return h("span", { class: "traffic", "data-session": session, "data-bytes-out": p.bytes_out ?? 0, "data-bytes-in": p.bytes_in ?? 0 }, `${bytes(p.bytes_out)} out, ${bytes(p.bytes_in)} in`);
}

/** The counts move all the time, so the digest leaves them out (no "changed" for them): one
 * `sessions` call every TRAFFIC_EVERY seconds, only while a tunnel's counts are on screen. */
const TRAFFIC_EVERY = 5;
let trafficTick = 0;
async function refreshTraffic(): Promise<void> {
  if (++trafficTick % TRAFFIC_EVERY !== 0 || rendering || document.hidden || main.dataset.page !== "sessions" || info?.role !== "master") return;
  const shown = Array.from(document.querySelectorAll<HTMLElement>(".traffic"));
  if (!shown.length) return;
  const byId = new Map((await call<Json[]>("sessions").catch(() => [])).map((s) => [s.session, s.tunnel?.packets]));
  for (const el of shown) {
    const p = byId.get(el.dataset.session ?? "");
    if (p) el.replaceWith(traffic(el.dataset.session!, p));
  }
}

async function relayFleet(): Promise<Node[]> {
  const devices = await call<Json[]>("devices");
  const order: Record<string, number> = { online: 0, alive: 1, lost: 2, offline: 3 };
  devices.sort((a, b) => (order[a.state] ?? 9) - (order[b.state] ?? 9) || String(a.location).localeCompare(String(b.location)));
  const list = h("div", { class: "cards", id: "devices" });
  for (const d of devices) {
    const hb: Json | null = d.heartbeat ?? null;
    const card = h("div", { class: `card device ${d.online ? "online" : "offline"}`, "data-id": d.id, "data-search": [d.id, d.hostname, d.location, d.address, d.uplink, d.state].join(" ").toLowerCase() },
      h("div", { class: "loc" }, d.location || "(no location)"),
      h("div", { class: "id" }, d.id, " ", pill(d.state ?? (d.online ? "online" : "offline"))),
      kv([
        ["status", d.status],
        ["host", d.hostname],
        ["address", d.address],
        ["uplink", d.uplink],
        ["agent", d.agent],
        ["last seen", d.online ? "now" : ago(d.last_seen)],
        ["heartbeat", hb ? `${ago(hb.at)}${hb.via ? ` via ${hb.via}` : ""} from ${hb.from}` : "none"],
        ["diagnostics", diagnostics(hb)],
        ["certificate expires", d.cert_expires],
        ["first seen", d.first_seen],
      ]),
      h("div", { class: "row" },
        d.online && has("kick") ? h("button", { class: "danger kick", onclick: () => act(() => call("kick", { id: d.id, reason: `kicked from the web GUI by ${info.user}` }), `${d.id} kicked`) }, "Kick") : null,
        has("devicesHistory") ? h("button", { class: "ghost history", onclick: (ev: Event) => void showHistory(d.id, ev.target as HTMLElement) }, "History") : null,
      ),
    );
    card.hidden = !deviceMatches(d, keep.search);
    list.append(card);
  }
  return [
    h("h1", {}, `Fleet (${devices.filter((d) => d.online).length} online of ${devices.length})`),
    searchBox(() => list, matchSearch),
    devices.length ? list : h("p", { class: "muted" }, "No device has connected yet."),
  ];
}

async function showHistory(id: string, at: HTMLElement): Promise<void> {
  try {
    const rows = await call<Json[]>("devicesHistory", { id });
    const t = h("table", { class: "history" }, h("tr", {}, h("th", {}, "when"), h("th", {}, "what"), h("th", {}, "address"), h("th", {}, "reason")));
    for (const r of rows.slice(-20).reverse()) t.append(h("tr", {}, h("td", {}, r.at), h("td", {}, r.kind), h("td", {}, r.address), h("td", {}, r.reason)));
    at.closest(".card")!.append(t);
  } catch (e) {
    flash((e as Error).message, true);
  }
}

async function relaySessions(): Promise<Node[]> {
  const sessions = await call<Json[]>("sessions");
  const t = h("table", { id: "sessions" }, h("tr", {}, h("th", {}, "session"), h("th", {}, "master → device"), h("th", {}, "time left"), h("th", {}, "targets"), h("th", {}, "opened"), h("th", {}, "")));
  for (const s of sessions) {
    t.append(h("tr", { "data-session": s.session },
      h("td", { class: "id" }, s.session),
      h("td", {}, `${s.master} → ${s.onsite}`),
      h("td", {}, h("span", { class: "countdown", "data-expires": s.expires ?? "" }, left(s.expires))),
      h("td", {}, (s.targets ?? []).join(", ")),
      h("td", {}, ago(s.opened)),
      h("td", {}, has("sessionsEnd") ? h("button", { class: "danger end", onclick: () => act(() => call("sessionsEnd", { session: s.session, reason: `ended from the web GUI by ${info.user}` }), "session ended") }, "End") : null),
    ));
  }
  return [h("h1", {}, `Sessions (${sessions.length})`), sessions.length ? t : h("p", { class: "muted" }, "No session.")];
}

async function relayRefusals(): Promise<Node[]> {
  const refusals = await call<Json[]>("refusals");
  const t = h("table", { id: "refusals" }, h("tr", {}, h("th", {}, "when"), h("th", {}, "address"), h("th", {}, "code"), h("th", {}, "presented"), h("th", {}, "reason")));
  for (const r of [...refusals].reverse()) t.append(h("tr", {}, h("td", {}, ago(r.time)), h("td", {}, r.address), h("td", {}, r.code), h("td", {}, r.presented ?? ""), h("td", {}, r.reason)));
  return [h("h1", {}, `Refusals (last ${refusals.length})`), refusals.length ? t : h("p", { class: "muted" }, "Nothing refused.")];
}

async function relayStatus(): Promise<Node[]> {
  const s = await call("status");
  const r: Json = s.relay ?? {};
  const n: Json | null = r.nymea ?? s.nymea ?? null;
  const scalars = (o: Json) => Object.entries(o).filter(([, v]) => v !== null && typeof v !== "object") as [string, unknown][];
  return [
    h("h1", {}, `Relay ${s.id}`),
    h("div", { class: "cards" },
      h("div", { class: "card", id: "status-card" }, h("h2", {}, "This relay"), kv([["uptime", duration(s.uptime_s)], ["version", `${s.version} (${s.commit})`], ["started", s.started], ...scalars(r)])),
      h("div", { class: "card", id: "nymea-card" }, h("h2", {}, "nymea listener"), n ? kv(scalars(n)) : h("p", { class: "muted" }, "not configured ([nymea])")),
    ),
  ];
}

// ---- shell ----

async function render(): Promise<void> {
  if (!info?.user) return;
  if (rendering) {
    refreshQueued = true;
    return;
  }
  rendering = true;
  try {
    const name = current();
    for (const a of Array.from(nav.children) as HTMLAnchorElement[]) a.classList.toggle("on", a.dataset.page === name);
    const flashEl = document.getElementById("flash");
    const nodes = await pages()[name]!.render();
    const openDialog = document.querySelector("dialog[open]");
    main.replaceChildren(...(flashEl ? [flashEl] : []), ...nodes);
    if (openDialog) document.body.append(openDialog);
    main.dataset.page = name;
    main.dataset.rendered = String(Date.now());
  } catch (e) {
    if ((e as Error).message !== "logged out") main.replaceChildren(h("div", { class: "msg err", role: "alert" }, (e as Error).message));
  } finally {
    rendering = false;
    if (refreshQueued) {
      refreshQueued = false;
      void render();
    }
  }
}

function listen(): void {
  events?.close();
  events = new EventSource("/api/events");
  let wasLost = false;
  events.addEventListener("open", () => {
    banner.hidden = true;
    document.body.dataset.live = "yes";
    if (wasLost) void render();
    wasLost = false;
  });
  events.addEventListener("error", () => {
    wasLost = true;
    document.body.dataset.live = "no";
    banner.textContent = "Connection to the daemon lost: reconnecting…";
    banner.hidden = false;
    // A daemon that restarted has forgotten the login: the next answer says so.
    if (events?.readyState === EventSource.CLOSED) setTimeout(() => void boot(), 2000);
  });
  const changed = () => void render();
  events.addEventListener("changed", changed);
  events.addEventListener("agent", changed);
}

function loginPage(): void {
  nav.replaceChildren();
  who.replaceChildren();
  if (!info.users) {
    main.replaceChildren(h("h1", {}, "No user yet"), h("div", { class: "msg", id: "setup" }, info.setup ?? ""), h("pre", {}, "printf '%s\\n' 'a long password' | agent gui user add NAME"), h("p", { class: "muted" }, "Then reload this page. There are no default credentials."));
    return;
  }
  const user = h("input", { name: "user", autocomplete: "username", required: true });
  const pass = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const err = h("div", { class: "msg err", id: "login-error", hidden: true });
  const btn = h("button", { type: "submit", id: "login" }, "Log in");
  const form = h("form", { class: "stack", id: "login-form" }, h("h1", {}, `Log in to ${info.role} ${info.id}`), h("label", {}, "User", user), h("label", {}, "Password", pass), err, btn);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    btn.disabled = true;
    err.hidden = true;
    void post("/api/login", { user: user.value, password: pass.value })
      .then(() => boot())
      .catch((e: Error) => {
        err.textContent = e.message;
        err.hidden = false;
      })
      .finally(() => (btn.disabled = false));
  });
  main.replaceChildren(form);
  user.focus();
}

async function boot(): Promise<void> {
  try {
    const r = await fetch("/api/info");
    info = (await r.json()) as Info;
  } catch {
    banner.textContent = "The daemon does not answer: retrying…";
    banner.hidden = false;
    setTimeout(() => void boot(), 2000);
    return;
  }
  banner.hidden = true;
  document.getElementById("title")!.textContent = `agent ${info.role} ${info.id}`;
  document.title = `agent ${info.role} ${info.id}`;
  if (!info.user) {
    events?.close();
    events = null;
    loginPage();
    return;
  }
  nav.replaceChildren(...Object.entries(pages()).map(([k, p]) => h("a", { href: `#/${k}`, "data-page": k }, p.title)));
  const out = h("button", { class: "ghost", id: "logout", onclick: () => void post("/api/logout", {}).finally(() => boot()) }, "Log out");
  who.replaceChildren(info.user, out);
  listen();
  await render();
}

window.addEventListener("hashchange", () => {
  document.getElementById("flash")?.remove();
  void render();
});
// Countdowns tick in the page; nothing is fetched for them.
setInterval(() => {
  void refreshTraffic();
  for (const el of Array.from(document.querySelectorAll<HTMLElement>(".countdown"))) {
    const text = left(el.dataset.expires || null);
    el.textContent = text;
    const pillEl = el.closest(".grant")?.querySelector(".pill");
    if (text === "expired" && pillEl) {
      pillEl.textContent = "expired";
      pillEl.className = "pill expired";
    }
  }
}, 1000);
void boot();
