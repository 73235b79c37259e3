// A shared object's ELF headers checked against its size before the loader maps it. dlopen of a
// truncated .so does not fail: the loader maps segments past the end of the file and the process
// dies of SIGBUS when it touches them, which no try/catch can turn into a fallback. So a file whose
// headers name bytes it does not have is refused here with a sentence, and `--runtime auto` moves on.
// Reads only the headers (a few KiB), 64-bit little-endian ELF (every platform the addon builds for).
import { closeSync, fstatSync, openSync, readSync } from "node:fs";

const PT_LOAD = 1;

/** null when the headers of the ELF file at `path` are whole, else what is wrong with it. */
export function elfProblem(path: string): string | null {
  const fd = openSync(path, "r");
  try {
    const size = fstatSync(fd).size;
    const read = (offset: number, length: number): Buffer | null => {
      if (offset + length > size) return null;
      const b = Buffer.alloc(length);
      return readSync(fd, b, 0, length, offset) === length ? b : null;
    };
    const h = read(0, 64);
    if (h === null || h.readUInt32BE(0) !== 0x7f454c46) return "not an ELF shared object";
    if (h[4] !== 2 || h[5] !== 1) return "not a 64-bit little-endian ELF file";
    const phoff = Number(h.readBigUInt64LE(32));
    const shoff = Number(h.readBigUInt64LE(40));
    const phentsize = h.readUInt16LE(54);
    const phnum = h.readUInt16LE(56);
    const shentsize = h.readUInt16LE(58);
    const shnum = h.readUInt16LE(60);
    // ELF64 program headers are 56 bytes; anything else is not a file the loader would take.
    if (phnum && phentsize !== 56)
      return `not a loadable ELF file (program header size ${phentsize})`;
    const need = (end: number, what: string) =>
      end > size ? `truncated: ${what} ends at byte ${end}, the file has ${size}` : null;
    const table = need(phoff + phentsize * phnum, "the program header table");
    if (table) return table;
    for (let i = 0; i < phnum; i++) {
      const ph = read(phoff + i * phentsize, 56)!;
      if (ph.readUInt32LE(0) !== PT_LOAD) continue;
      const end = Number(ph.readBigUInt64LE(8)) + Number(ph.readBigUInt64LE(32));
      const segment = need(end, `loadable segment ${i}`);
      if (segment) return segment;
    }
    return shnum ? need(shoff + shentsize * shnum, "the section header table") : null;
  } finally {
    closeSync(fd);
  }
}
