// `agent --role relay|onsite|master ...`: builds the config, loads the bundle and runs the
// daemon of that role until a signal stops it.
import { requireForRole, type Role } from "../config.ts";
import { UsageError } from "../errors.ts";
import { configureLogging } from "../log.ts";
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
    const log = configureLogging({ level: cfg.log_level, json: cfg.json_logs });
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
    // --- uplink manager (issue 5): onsite devices with [[uplink]] entries ---
    if (role === "onsite" && cfg.uplink.length > 0) {
      const { createUplinkManager } = await import("../uplink/index.ts");
      const uplinks = createUplinkManager(cfg, log.withTag("uplink"));
      daemon.add(uplinks);
      daemon.control.handle("uplink.status", () => uplinks.report());
      // The relay dialer hooks here: uplinks.onActiveChange((ev) => redial now).
    }
    // --- end uplink manager ---
    return runUntilSignal(daemon);
  },
});
