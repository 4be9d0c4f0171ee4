// Build identity. Release builds replace the AGENT_BUILD_* globals with `bun build --define`
// (see build/release.ts); a run from source reports "dev" and asks git for the commit.
import pkg from "../package.json" with { type: "json" };
import { realExecSync } from "./os/spawn.ts";

declare const AGENT_BUILD_COMMIT: string | undefined;
declare const AGENT_BUILD_TARGET: string | undefined;
declare const AGENT_BUILD_ROLE: string | undefined;
declare const AGENT_BUILD_TIME: string | undefined;

export const VERSION: string = pkg.version;

let devCommit: string | undefined;

export function buildCommit(): string {
  if (typeof AGENT_BUILD_COMMIT === "string") return AGENT_BUILD_COMMIT;
  // From source: ask git once per process, not at every `status` request.
  return (devCommit ??= gitCommit());
}

function gitCommit(): string {
  const r = realExecSync(["git", "rev-parse", "--short=12", "HEAD"], { cwd: import.meta.dir });
  const out = r.stdout.trim();
  return r.code === 0 && out ? out : "unknown";
}

export function buildTarget(): string {
  return typeof AGENT_BUILD_TARGET === "string" ? AGENT_BUILD_TARGET : `dev-${process.platform}-${process.arch}`;
}

/** The role a per-role release executable starts as when --role is not given. */
export function bakedRole(): string | undefined {
  return typeof AGENT_BUILD_ROLE === "string" && AGENT_BUILD_ROLE !== "" ? AGENT_BUILD_ROLE : undefined;
}

export function versionInfo() {
  return { version: VERSION, commit: buildCommit(), target: buildTarget(), bun: Bun.version, role: bakedRole() ?? null };
}

export function versionText(): string {
  const v = versionInfo();
  return `agent ${v.version} (commit ${v.commit}, target ${v.target}${v.role ? `, role ${v.role}` : ""}, bun ${v.bun})`;
}

let devBuildTime: number | null | undefined;

/**
 * When this executable was built (epoch ms): a release build bakes it in (build/release.ts:
 * SOURCE_DATE_EPOCH, else the commit's time, else the build's clock); from source, the HEAD
 * commit's time. A lower bound of "now" for a host without an RTC (a Pi boots in 1970 or at
 * its last shutdown until NTP answers): certificates are never judged with an earlier clock.
 * Undefined when not known (no git from source).
 */
export function buildTime(): number | undefined {
  if (typeof AGENT_BUILD_TIME === "string" && AGENT_BUILD_TIME !== "") {
    const t = Date.parse(AGENT_BUILD_TIME);
    return Number.isNaN(t) ? undefined : t;
  }
  if (devBuildTime === undefined) {
    const r = realExecSync(["git", "log", "-1", "--format=%ct", "HEAD"], { cwd: import.meta.dir });
    const secs = Number(r.stdout.trim());
    devBuildTime = r.code === 0 && Number.isInteger(secs) && secs > 0 ? secs * 1000 : null;
  }
  return devBuildTime ?? undefined;
}
