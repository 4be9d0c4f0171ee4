// The open-files limit: a relay holds one descriptor per device. Bun raises its soft limit to
// the hard limit at start by itself (checked: a relay started under `prlimit --nofile=200:8192`
// runs with 8192), so the relay only reads it, reports it and warns when it is low.
import { errno, libc, OsError } from "./os/libc.ts";

const RLIMIT_NOFILE = 7;

export interface FdLimit {
  soft: number;
  hard: number;
}

export function fdLimit(): FdLimit {
  const buf = new BigUint64Array(2); // struct rlimit { rlim_t cur, max; }
  if (libc().getrlimit(RLIMIT_NOFILE, buf) !== 0) throw new OsError("getrlimit(RLIMIT_NOFILE) failed", errno());
  return { soft: Number(buf[0]), hard: Number(buf[1]) };
}
