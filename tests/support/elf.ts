// ELF files written for tests: the headers the initramfs builder reads (machine, PT_INTERP,
// DT_NEEDED), as an image author can write them.

/** A minimal ELF64 LE file: one PT_LOAD over the whole file at vaddr 0, PT_INTERP when given,
 *  PT_DYNAMIC with DT_NEEDED entries and DT_STRTAB. */
export function elf(
  machine: number,
  opts: { interp?: string; needed?: string[]; type?: number } = {},
) {
  const enc = new TextEncoder();
  const needed = opts.needed ?? [];
  const phnum = 1 + (opts.interp ? 1 : 0) + (needed.length ? 1 : 0);
  let off = 64 + 56 * phnum;
  const interp = opts.interp ? enc.encode(opts.interp + "\0") : new Uint8Array();
  const interpOff = off;
  off += interp.length;
  const strtabOff = off;
  const names = needed.map((n) => enc.encode(n + "\0"));
  const nameOffs: number[] = [];
  let strLen = 1; // a leading NUL, as real string tables have
  for (const n of names) {
    nameOffs.push(strLen);
    strLen += n.length;
  }
  off += strLen;
  off += (8 - off % 8) % 8;
  const dynOff = off;
  const dynLen = needed.length ? 16 * (needed.length + 2) : 0;
  const total = dynOff + dynLen;
  const out = new Uint8Array(total);
  const v = new DataView(out.buffer);
  out.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  v.setUint16(16, opts.type ?? 3, true);
  v.setUint16(18, machine, true);
  v.setBigUint64(32, 64n, true);
  v.setUint16(54, 56, true);
  v.setUint16(56, phnum, true);
  const ph = (i: number, type: number, o: number, len: number) => {
    const p = 64 + 56 * i;
    v.setUint32(p, type, true);
    v.setBigUint64(p + 8, BigInt(o), true);
    v.setBigUint64(p + 16, BigInt(o), true);
    v.setBigUint64(p + 32, BigInt(len), true);
    v.setBigUint64(p + 40, BigInt(len), true);
  };
  let i = 0;
  ph(i++, 1, 0, total); // PT_LOAD
  if (opts.interp) {
    ph(i++, 3, interpOff, interp.length); // PT_INTERP
    out.set(interp, interpOff);
  }
  names.forEach((n, j) => out.set(n, strtabOff + nameOffs[j]));
  if (needed.length) {
    ph(i++, 2, dynOff, dynLen); // PT_DYNAMIC
    needed.forEach((_, j) => {
      v.setBigInt64(dynOff + 16 * j, 1n, true); // DT_NEEDED
      v.setBigUint64(dynOff + 16 * j + 8, BigInt(nameOffs[j]), true);
    });
    v.setBigInt64(dynOff + 16 * needed.length, 5n, true); // DT_STRTAB
    v.setBigUint64(dynOff + 16 * needed.length + 8, BigInt(strtabOff), true);
  }
  return out;
}
