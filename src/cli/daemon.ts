// `agent --role relay|onsite|master ...`: builds the config, loads the bundle and runs the
// daemon of that role until a signal stops it.
import { requireForRole, type Role } from "../config.ts";
import { UsageError } from "../errors.ts";
import { createLogger } from "../log.ts";
import { Daemon, runUntilSignal } from "../roles/daemon.ts";
import { bakedRole } from "../version.ts";
import { defineAgentCommand } from "./args.ts";
import { configFromArgs, daemonArgs } from "./common.ts";

export const daemonCommand = defineAgentCommand({
  meta: { name: "agent", description: "Edge remote-access agent. Without a command, runs the daemon of --role." },
  args: daemonArgs,
  repeatable: ["allow"],
  async exec(args) {
    const cfg = await configFromArgs(args);
    const role = (cfg.role ?? bakedRole()) as Role | undefined;
    if (!role) {
      throw new UsageError("no role given", "run `agent --role relay|onsite|master ...`, or a command such as `agent status` (see `agent --help`)");
    }
    requireForRole(cfg, role);
    const log = createLogger({ level: cfg.log_level, json: cfg.json_logs });
    const { loadBundle } = await import("../pki.ts"); // node-forge: loaded only when a daemon starts
    const bundle = await loadBundle(cfg.bundle!);
    if (bundle.role !== role) {
      throw new UsageError(
        `bundle ${cfg.bundle} is for role ${bundle.role} (id ${bundle.id}), not ${role}`,
        `issue one with \`agent pki issue --role ${role} ...\` or start with --role ${bundle.role}`,
      );
    }
    // An expired or not-yet-valid certificate is logged, not fatal: a Pi has no RTC and may
    // boot with a wrong clock until NTP answers, and the relay decides with its own clock.
    const now = Date.now();
    if (now > bundle.notAfter.getTime()) {
      log.error(`certificate in ${cfg.bundle} expired on ${bundle.notAfter.toISOString()}; the relay will refuse it`, { hint: "issue a new bundle with `agent pki issue --force`" });
    } else if (now < bundle.notBefore.getTime()) {
      log.warn(`certificate in ${cfg.bundle} is valid only from ${bundle.notBefore.toISOString()}; is this clock right?`, { now: new Date(now).toISOString() });
    }
    const daemon = new Daemon({ role, id: bundle.id }, cfg, log.withTag(role));
    const rlog = log.withTag(role);
    if (role === "relay") {
      const { RelayRole } = await import("../roles/relay.ts");
      daemon.add(new RelayRole(cfg, bundle, rlog, daemon.control));
    } else if (role === "onsite") {
      // Timed DNAT rules (src/nat) first: the onsite role hands them requests that masters
      // make inside sessions, and removes them when those sessions end.
      const { createNatComponent } = await import("../nat/component.ts");
      const { OnsiteRole } = await import("../roles/onsite.ts");
      const nat = createNatComponent({ control: daemon.control, config: cfg, log: log.withTag("nat") });
      daemon.add(nat);
      const onsite = new OnsiteRole(cfg, bundle, rlog, daemon.control, nat);
      // The uplink manager (src/uplink) when the config lists [[uplink]]s: the relay
      // connection follows the active uplink, re-dialed at once after a switch.
      let healthy: () => string[] = () => [];
      if (cfg.uplink.length > 0) {
        const { createUplinkManager } = await import("../uplink/index.ts");
        const uplinks = createUplinkManager(cfg, log.withTag("uplink"));
        daemon.add(uplinks);
        daemon.control.handle("uplink.status", () => uplinks.report());
        uplinks.onActiveChange((ev) => onsite.uplinkChanged(ev.to ?? "", ev.reason));
        healthy = () => (uplinks.status().healthy as string[]) ?? [];
      }
      // Wi-Fi client and AP fallback (src/uplink/wifi.ts), also spoken as netconnectd's
      // NUL-terminated protocol on the same control socket.
      if (cfg.ap.enabled) {
        const { createWifiService, answerNetconnectd, encodeNetconnectd } = await import("../uplink/index.ts");
        const wifi = await createWifiService(cfg, log.withTag("wifi"), () => healthy());
        daemon.add(wifi);
        const c = daemon.control;
        c.handle("wifi.status", () => wifi.report());
        c.handle("wifi.list", (a) => wifi.listNetworks(a.force === true));
        c.handle("wifi.configure", (a) => {
          if (typeof a.ssid !== "string" || (a.psk !== undefined && typeof a.psk !== "string")) throw new UsageError("wifi.configure needs a string ssid and psk");
          if (a.priority !== undefined && typeof a.priority !== "number") throw new UsageError("priority must be a number");
          return wifi.configure(a.ssid, a.psk as string | undefined, { priority: a.priority as number | undefined });
        });
        c.handle("ap.start", () => wifi.startAp());
        c.handle("ap.stop", () => wifi.stopAp());
        c.nulProtocol(async (text) => encodeNetconnectd(await answerNetconnectd(wifi, text)));
      }
      daemon.add(onsite);
    } else {
      const { MasterRole } = await import("../roles/master.ts");
      daemon.add(new MasterRole(cfg, bundle, rlog, daemon.control));
    }
    return runUntilSignal(daemon);
  },
});
