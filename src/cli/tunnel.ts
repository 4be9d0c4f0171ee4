// `agent tunnel mode SESSION routed|bridged`, and the tunnel lines of `agent connect` and
// `agent sessions` (master): mode, both ends' interfaces, addresses and routes, packets and
// bytes each way, drops by reason.
import { UsageError } from "../errors.ts";
import type { MasterApi } from "../roles/api.ts";
import type { TunnelView } from "../tunnel/master-tunnel.ts";
import { DROP_REASONS } from "../transport/packet.ts";
import { defineAgentCommand, flag, str } from "./args.ts";
import { configArgs, configFromArgs, daemonClient } from "./common.ts";
import { reachFlags } from "./format.ts";

/** The SSH client's address of this shell (SSH_CONNECTION, else SSH_CLIENT), if it is one (pure). */
export function sshPeer(env: Record<string, string | undefined>): string | undefined {
  const first = (env.SSH_CONNECTION ?? env.SSH_CLIENT ?? "").trim().split(/\s+/)[0];
  return first && /^[\d.]+$|^[0-9a-f:]+$/i.test(first) ? first.replace(/^::ffff:/, "") : undefined;
}

/** A mode as typed, or a usage error naming it (exit 2). */
export function parseModeArg(v: string | undefined, what: string): "routed" | "bridged" {
  if (v === "routed" || v === "bridged") return v;
  if (v === undefined || v === "") throw new UsageError(`${what}: give routed or bridged`, "routed: a TUN device and routes to the device's LAN; bridged: a TAP device in the LAN's bridge");
  throw new UsageError(`${what}: expected routed or bridged, got ${JSON.stringify(v.slice(0, 40))}`, "routed: a TUN device and routes to the device's LAN; bridged: a TAP device in the LAN's bridge");
}

function size(n: number): string {
  if (n < 1000) return `${n} B`;
  const units = ["kB", "MB", "GB", "TB"];
  let v = n;
  let u = -1;
  while (v >= 1000 && u < units.length - 1) {
    v /= 1000;
    u++;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[u]}`;
}

/** The lines of one session's tunnel (pure). */
export function formatTunnel(session: string, t: TunnelView): string[] {
  const end = (who: string, e: TunnelView["master"]) =>
    e ? `  ${who.padEnd(6)} ${e.iface}  ${e.addresses.join(" ") || "-"}${e.routes.length ? `  routes ${e.routes.join(" ")}` : ""}${e.bridge ? `  bridge ${e.bridge}` : ""}` : `  ${who.padEnd(6)} -`;
  const p = t.packets;
  const drops = DROP_REASONS.filter((r) => p.drops[r] > 0).map((r) => `${r} ${p.drops[r]}`);
  const lines = [
    `tunnel of ${session}: ${t.mode}, ${t.state}${t.reason ? ` (${t.reason})` : ""}${t.mode === "routed" && t.subnets.length ? `, to ${t.subnets.join(" ")}` : ""}`,
    end("master", t.master),
    end("onsite", t.onsite),
    `  packets out ${p.packets_out} (${size(p.bytes_out)}), in ${p.packets_in} (${size(p.bytes_in)}); drops: ${drops.length ? drops.join(", ") : "none"}`,
  ];
  for (const w of t.warnings) lines.push(`  warning: ${w}`);
  return lines;
}

const mode = defineAgentCommand({
  meta: { name: "mode", description: "Switch a live session's tunnel between routed (TUN) and bridged (TAP); the session stays (master)" },
  args: {
    ...configArgs,
    session: { type: "positional", valueHint: "session", description: "session id (see `agent sessions`)" },
    mode: { type: "positional", valueHint: "routed|bridged", description: "the new mode" },
    json: { type: "boolean", description: "print JSON" },
  },
  runsOn: ["master"],
  async exec(args, ctx) {
    const session = str(args, "session");
    if (!session) throw new UsageError("agent tunnel mode needs a session and a mode", "e.g. agent tunnel mode s-k2j9x0aa bridged (see `agent sessions`)");
    const m = parseModeArg(str(args, "mode"), "agent tunnel mode");
    const cfg = await configFromArgs(args);
    const requester = sshPeer(process.env);
    const s = await daemonClient<MasterApi>(ctx, cfg.control, { timeoutMs: 30_000 }).call("tunnelMode", { session, mode: m, ...(requester ? { requester } : {}) });
    if (flag(args, "json")) {
      ctx.io.out(JSON.stringify(s, null, 2) + "\n");
      return 0;
    }
    const lines = s.tunnel ? formatTunnel(s.session, s.tunnel) : [`session ${s.session}: tunnel switched to ${m}`];
    lines.push(`back with: agent tunnel mode ${s.session} ${m === "routed" ? "bridged" : "routed"}${reachFlags(args)}`);
    ctx.io.out(lines.join("\n") + "\n");
    return 0;
  },
});

export const tunnelCommand = defineAgentCommand({
  meta: { name: "tunnel", description: "Packet tunnels of sessions (master): mode" },
  subCommands: { mode },
});
