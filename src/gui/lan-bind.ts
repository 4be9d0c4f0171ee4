// `gui = ":PORT"`: the GUI on the LAN side. A master's LAN side is its secondary interface
// ([tunnel] secondary, where the technician's laptop plugs in); its uplink is a customer's or a
// public network and never gets the page. The page is always on 127.0.0.1 too; when the
// secondary has no IPv4 address yet (DHCP, a cable not yet in) the GUI says so and binds it
// once it appears, polling the OS every POLL_MS on the monotonic clock.
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import type { Logger } from "../log.ts";
import type { IfAddrMap, IfAddrs } from "../os/if-addrs.ts";
import type { GuiServer } from "./server.ts";

/** What LanGui drives: a GuiServer (a fake in test/gui-lan-bind.test.ts). */
export type LanGuiServer = Pick<GuiServer, "start" | "close" | "serveAlso" | "alsoServed" | "port" | "url" | "status">;

export const POLL_MS = 2000;
export const LOOPBACK = "127.0.0.1";

export interface BindPlan {
  /** The LAN side's IPv4 addresses to serve besides loopback (sorted). */
  lan: string[];
  /** Why the page is on loopback only, or null. */
  waiting: string | null;
}

/** Which addresses the page is served on given the interfaces now (pure). `secondary` unset: no LAN side (a relay). */
export function guiBindPlan(secondary: string | undefined, ifs: IfAddrMap): BindPlan {
  if (!secondary) return { lan: [], waiting: `no LAN side here (no [tunnel] secondary): the web GUI is on ${LOOPBACK} only; set gui = "ADDR:PORT" to choose an address` };
  const list = ifs[secondary];
  if (!list) return { lan: [], waiting: `the LAN side ${secondary} ([tunnel] secondary) does not exist yet: the web GUI is on ${LOOPBACK} only until it has an IPv4 address` };
  const lan = [...new Set(list.filter((a) => (a.family === "IPv4" || a.family === 4) && !a.internal && !a.address.startsWith("127.")).map((a) => a.address))].sort();
  if (lan.length === 0) return { lan, waiting: `the LAN side ${secondary} ([tunnel] secondary) has no IPv4 address yet: the web GUI is on ${LOOPBACK} only until it has one` };
  return { lan, waiting: null };
}

/** The GUI's component for `gui = ":PORT"`: the server on loopback, plus the LAN side's addresses as they come and go. */
export class LanGui {
  readonly name = "gui";
  private timer: ReturnType<Clock["setInterval"]> | undefined;
  private plan: BindPlan = { lan: [], waiting: null };
  private busy = false;

  constructor(
    readonly gui: LanGuiServer,
    private readonly secondary: string | undefined,
    private readonly ifs: IfAddrs,
    private readonly log: Logger,
    private readonly clock: Clock = systemClock,
    private readonly pollMs = POLL_MS,
  ) {}

  get url(): string {
    return this.gui.url;
  }

  async start(): Promise<void> {
    await this.gui.start();
    await this.tick();
    if (this.secondary) this.timer = this.clock.setInterval(() => void this.tick(), this.pollMs);
  }

  /** Reads the interfaces once and serves what the plan says (also what the poll runs). */
  async tick(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      const next = guiBindPlan(this.secondary, this.ifs.list());
      const prev = this.plan;
      this.plan = next;
      if (next.waiting && next.waiting !== prev.waiting) this.log.warn(next.waiting);
      if (next.lan.join(",") === prev.lan.join(",") && next.lan.length === this.gui.alsoServed.length) return;
      const failed = await this.gui.serveAlso(next.lan);
      for (const f of failed) this.log.warn(`the web GUI cannot listen on ${f.host}:${this.gui.port} (the LAN side ${this.secondary}): ${f.error}; trying again in ${this.pollMs / 1000} s`);
      const up = this.gui.alsoServed;
      if (up.length) this.log.info(`web GUI on the LAN side ${this.secondary}: ${up.map((h) => `${this.gui.url.split(":")[0]}://${h}:${this.gui.port}/`).join(" ")}`);
      else if (prev.lan.length) this.log.warn(`the LAN side ${this.secondary} lost its address: the web GUI is on ${LOOPBACK} only`);
    } finally {
      this.busy = false;
    }
  }

  status(): Record<string, unknown> {
    return { ...this.gui.status(), lan: this.gui.alsoServed, waiting: this.plan.waiting };
  }

  async close(): Promise<void> {
    this.clock.clearInterval(this.timer);
    this.timer = undefined;
    await this.gui.close();
  }
}
