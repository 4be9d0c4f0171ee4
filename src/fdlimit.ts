// The open-files limit: a relay holds one descriptor per device. Bun raises its soft limit to
// the hard limit at start by itself (checked: a relay started under `prlimit --nofile=200:8192`
// runs with 8192), so the relay only reads it, reports it and warns when it is low.
import { dlopen, FFIType, ptr } from "bun:ffi";
import { libcPath } from "./libc.ts";

const RLIMIT_NOFILE = 7;

export interface FdLimit {
  soft: number;
  hard: number;
}

export function fdLimit(): FdLimit {
  const lib = dlopen(libcPath(), { getrlimit: { args: [FFIType.i32, FFIType.ptr], returns: FFIType.i32 } });
  try {
    const buf = new BigUint64Array(2);
    if (lib.symbols.getrlimit(RLIMIT_NOFILE, ptr(buf)) !== 0) throw new Error("getrlimit(RLIMIT_NOFILE) failed");
    return { soft: Number(buf[0]), hard: Number(buf[1]) };
  } finally {
    lib.close();
  }
}
