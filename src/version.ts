// Build identity. Release builds replace the AGENT_BUILD_* globals with `bun build --define`
// (see build/release.ts); a run from source reports "dev" and asks git for the commit.
import pkg from "../package.json" with { type: "json" };
import { realExecSync } from "./os/spawn.ts";

declare const AGENT_BUILD_COMMIT: string | undefined;
declare const AGENT_BUILD_TARGET: string | undefined;
declare const AGENT_BUILD_ROLE: string | undefined;

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
