// libc for bun:ffi, by a name that exists on each target: glibc's soname, or musl's loader
// (which is libc on musl systems such as OpenWRT). DESIGN.md: "Facts checked".
import { existsSync } from "node:fs";

export function libcPath(): string {
  const arch = process.arch === "arm64" ? "aarch64" : process.arch === "x64" ? "x86_64" : process.arch;
  const musl = `/lib/ld-musl-${arch}.so.1`;
  return existsSync(musl) ? musl : "libc.so.6";
}
