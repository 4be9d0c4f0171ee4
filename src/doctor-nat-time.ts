// Can this host's NAT backend match on time? Every DNAT rule `agent nat add` installs carries
// its expiry into the kernel (src/nat: iptables `-m time --datestop`, nft `meta time <`), so a
// host without the time match cannot install any. The probe asks the real tools to check a
// ruleset that uses the match, and installs nothing: `nft --check` and `iptables-restore
// --test` both stop before the commit. The decision from what they answered is pure.
import type { ExecSync } from "./os/spawn.ts";
import type { CheckStatus, NatBackend, OsFamily } from "./doctor.ts";

/** What the probe saw: `error` is the tool's first complaint line when it refused. */
export interface NatTimeFact {
  backend: NatBackend;
  ok: boolean;
  error?: string;
}

export const NAT_TIME_PROBE_TIMEOUT_MS = 5000;

/** The ruleset each backend is asked to check (a throwaway table or chain, never committed). */
export const NAT_TIME_PROBES: Record<NatBackend, { args: string[]; stdin: string }> = {
  nft: { args: ["--check", "-f", "-"], stdin: "table ip agt_timeprobe {\n  chain c {\n    meta time < 1 accept\n  }\n}\n" },
  iptables: { args: ["--test", "--noflush"], stdin: "*filter\n:AGT-TIMEPROBE - [0:0]\n-A AGT-TIMEPROBE -m time --datestop 2038-01-01T00:00:00 -j RETURN\nCOMMIT\n" },
};

/** Runs the probe with `tool` (nft, or iptables-restore for the iptables backend). Changes nothing. */
export function probeNatTime(backend: NatBackend, tool: string, execSync: ExecSync): NatTimeFact {
  const p = NAT_TIME_PROBES[backend];
  const r = execSync([tool, ...p.args], { stdin: p.stdin, timeoutMs: NAT_TIME_PROBE_TIMEOUT_MS });
  if (r.code === 0) return { backend, ok: true };
  const first = (r.stderr + "\n" + r.stdout).split("\n").map((l) => l.trim()).find((l) => l !== "") ?? `exit ${r.code}`;
  return { backend, ok: false, error: first };
}

const DENIED = /operation not permitted|permission denied|EPERM|EACCES/i;

const FIX: Record<NatBackend, Record<OsFamily, string>> = {
  iptables: {
    debian: "modprobe xt_time (Debian's kernels ship it; a custom kernel needs CONFIG_NETFILTER_XT_MATCH_TIME), or use nft",
    openwrt: "opkg install iptables-mod-extra kmod-ipt-extra (they carry the time match), or use nft",
    other: "load the kernel's xt_time module (CONFIG_NETFILTER_XT_MATCH_TIME) with iptables' time extension, or use nft",
  },
  nft: {
    debian: "meta time needs Linux 5.4 and nftables 0.9.4 or newer: upgrade them, or use iptables with xt_time",
    openwrt: "meta time needs Linux 5.4 and nftables 0.9.4 or newer (OpenWrt 21.02 and later), or use iptables with xt_time",
    other: "meta time needs Linux 5.4 and nftables 0.9.4 or newer: upgrade them, or use iptables with xt_time",
  },
};

/** The nat-time row: null when no backend was probed. Pure. */
export function natTimeRow(fact: NatTimeFact | undefined, os: OsFamily): { status: CheckStatus; detail: string; fix?: string } | null {
  if (!fact) return null;
  const match = fact.backend === "nft" ? "nft `meta time`" : "iptables `-m time` (xt_time)";
  if (fact.ok) return { status: "ok", detail: `${match} works: timed DNAT rules carry their expiry into the kernel` };
  if (DENIED.test(fact.error ?? "")) {
    return { status: "warn", detail: `could not test ${match}: ${fact.error}`, fix: "run `agent doctor` as root (the probe checks a ruleset with the kernel and installs nothing)" };
  }
  return {
    status: "missing",
    detail: `${match} is not supported here (${fact.error ?? "no answer"}): \`agent nat add\` cannot install its timed DNAT rules`,
    fix: FIX[fact.backend][os],
  };
}
