// ELF64 little-endian: just enough reading to know what a dynamic executable needs (PT_INTERP,
// DT_NEEDED, e_machine), and the generator of the initramfs /init launcher — a static x86-64 or
// aarch64 executable of a few hundred bytes, produced here so building needs no compiler.

export const EM_X86_64 = 62;
export const EM_AARCH64 = 183;

const PT_LOAD = 1;
const PT_DYNAMIC = 2;
const PT_INTERP = 3;
const DT_NULL = 0;
const DT_NEEDED = 1;
const DT_STRTAB = 5;

export interface ElfInfo {
  machine: number;
  /** ET_EXEC 2, ET_DYN 3 (PIE executables and shared libraries). */
  type: number;
  /** The program interpreter (dynamic loader) path, absent for static executables. */
  interp?: string;
  /** DT_NEEDED sonames, in file order. */
  needed: string[];
}

export function machineName(m: number): string {
  return m === EM_X86_64 ? "x86-64" : m === EM_AARCH64 ? "aarch64" : `machine ${m}`;
}

/** Reads `len` bytes at `offset` (short reads past the end are allowed). */
export type ReadAt = (offset: number, len: number) => Uint8Array;

/** The most a header may make parseElf read, as the kernel's binfmt_elf bounds them: the program
 *  header table 64 KiB, PT_INTERP PATH_MAX; PT_DYNAMIC (no kernel bound: a few hundred bytes in
 *  real binaries) 1 MiB. Image files are parsed (its /bin/sh at every initramfs request, its first
 *  module), and a sparse file's header declaring GiBs was read whole on the server's only thread. */
const MAX_PROGRAM_HEADERS = 64 << 10;
const MAX_INTERP = 4096;
const MAX_DYNAMIC = 1 << 20;
/** DT_NEEDED names: each is a read of its own, and a /bin/sh of 65,000 (1.5 MB) took 1 s of the
 *  server's only thread at every initramfs request. A real binary has a few dozen (qemu: 31). */
const MAX_NEEDED = 256;

/** Parses headers through `read` so a 95 MB binary is not loaded for a few KB of headers. */
export function parseElf(read: ReadAt, what = "file"): ElfInfo {
  const eh = read(0, 64);
  if (eh.length < 64 || eh[0] !== 0x7f || eh[1] !== 0x45 || eh[2] !== 0x4c || eh[3] !== 0x46) {
    throw new Error(`${what} is not an ELF file`);
  }
  if (eh[4] !== 2 || eh[5] !== 1) throw new Error(`${what} is not a 64-bit little-endian ELF`);
  const h = new DataView(eh.buffer, eh.byteOffset, eh.byteLength);
  const type = h.getUint16(16, true);
  const machine = h.getUint16(18, true);
  const phoff = Number(h.getBigUint64(32, true));
  const phentsize = h.getUint16(54, true);
  const phnum = h.getUint16(56, true);
  if (phnum && (phentsize !== 56 || phentsize * phnum > MAX_PROGRAM_HEADERS)) {
    throw new Error(`${what}: bad program header table (${phnum} of ${phentsize} bytes)`);
  }
  const ph = read(phoff, phentsize * phnum);
  if (ph.length < phentsize * phnum) throw new Error(`${what}: truncated program headers`);
  const pv = new DataView(ph.buffer, ph.byteOffset, ph.byteLength);
  const segs = Array.from({ length: phnum }, (_, i) => {
    const o = i * phentsize;
    return {
      type: pv.getUint32(o, true),
      offset: Number(pv.getBigUint64(o + 8, true)),
      vaddr: Number(pv.getBigUint64(o + 16, true)),
      filesz: Number(pv.getBigUint64(o + 32, true)),
    };
  });
  const cstring = (bytes: Uint8Array, at: number) => {
    const end = bytes.indexOf(0, at);
    return new TextDecoder().decode(bytes.subarray(at, end < 0 ? bytes.length : end));
  };
  const info: ElfInfo = { machine, type, needed: [] };
  const interp = segs.find((s) => s.type === PT_INTERP);
  if (interp && interp.filesz > MAX_INTERP) {
    throw new Error(`${what}: PT_INTERP of ${interp.filesz} bytes`);
  }
  if (interp) info.interp = cstring(read(interp.offset, interp.filesz), 0);
  const dyn = segs.find((s) => s.type === PT_DYNAMIC);
  if (!dyn) return info;
  if (dyn.filesz > MAX_DYNAMIC) throw new Error(`${what}: PT_DYNAMIC of ${dyn.filesz} bytes`);
  const d = read(dyn.offset, dyn.filesz);
  const dv = new DataView(d.buffer, d.byteOffset, d.byteLength);
  const needed: number[] = [];
  let strtab = -1;
  for (let o = 0; o + 16 <= d.length; o += 16) {
    const tag = Number(dv.getBigInt64(o, true));
    const val = Number(dv.getBigUint64(o + 8, true));
    if (tag === DT_NULL) break;
    if (tag === DT_NEEDED && needed.push(val) > MAX_NEEDED) {
      throw new Error(`${what}: more than ${MAX_NEEDED} DT_NEEDED entries`);
    }
    if (tag === DT_STRTAB) strtab = val;
  }
  if (!needed.length) return info;
  // DT_STRTAB is a virtual address: map it to a file offset through the PT_LOAD holding it.
  const load = segs.find((s) =>
    s.type === PT_LOAD && strtab >= s.vaddr && strtab < s.vaddr + s.filesz
  );
  if (!load) throw new Error(`${what}: DT_STRTAB outside every PT_LOAD segment`);
  const strOff = load.offset + (strtab - load.vaddr);
  for (const n of needed) {
    // Sonames are short; 256 bytes covers any real one.
    info.needed.push(cstring(read(strOff + n, 256), 0));
  }
  return info;
}

/** parseElf on a host file, reading only the header regions. */
export function readElfFile(path: string): ElfInfo {
  using f = Deno.openSync(path);
  const read: ReadAt = (offset, len) => {
    const buf = new Uint8Array(len);
    f.seekSync(offset, Deno.SeekMode.Start);
    let n = 0;
    while (n < len) {
      const got = f.readSync(buf.subarray(n));
      if (got === null) break;
      n += got;
    }
    return buf.subarray(0, n);
  };
  return parseElf(read, path);
}

export interface LauncherSpec {
  /** EM_X86_64 (default) or EM_AARCH64: the node's machine. */
  machine?: number;
  path: string;
  argv: string[];
  envp: string[];
  /** mount(2) calls made before execve; a failure is ignored (the program reports what lacks). */
  mounts?: { source: string; target: string; fstype: string; flags: number }[];
}

/** Data addresses the launcher's code loads (absolute: ET_EXEC at a fixed base). */
type LauncherAddrs = { path: number; argv: number; envp: number; msg: number; mounts: number[][] };

/** The aarch64 launcher: the same calls as launcherCode (syscall numbers of the generic table:
 *  mount 40, execve 221, write 64, exit 93; arguments in x0–x4, the number in x8, `svc #0`).
 *  Each address is loaded with movz + movk (always both: the length does not depend on it). */
function launcherCodeA64(
  mounts: NonNullable<LauncherSpec["mounts"]>,
  msgLength: number,
  a: LauncherAddrs,
): number[] {
  const code: number[] = [];
  const insn = (w: number) => code.push(w & 0xff, (w >>> 8) & 0xff, (w >>> 16) & 0xff, w >>> 24);
  const mov = (reg: number, v: number) => {
    insn((0xd2800000 | ((v & 0xffff) << 5) | reg) >>> 0); // movz xR, #lo16
    insn((0xf2a00000 | (((v >>> 16) & 0xffff) << 5) | reg) >>> 0); // movk xR, #hi16, lsl #16
  };
  const svc = (nr: number) => {
    mov(8, nr);
    insn(0xd4000001); // svc #0
  };
  mounts.forEach((m, i) => {
    const [source, target, fstype] = a.mounts[i];
    mov(0, source);
    mov(1, target);
    mov(2, fstype);
    mov(3, m.flags);
    mov(4, 0); // data = NULL
    svc(40); // mount
  });
  mov(0, a.path);
  mov(1, a.argv);
  mov(2, a.envp);
  svc(221); // execve: returns only on failure
  mov(0, 2);
  mov(1, a.msg);
  mov(2, msgLength);
  svc(64); // write(2, msg, len)
  mov(0, 127);
  svc(93); // exit(127)
  return code;
}

/** The launcher's machine code for given data addresses (its length does not depend on them). */
function launcherCode(
  mounts: NonNullable<LauncherSpec["mounts"]>,
  msgLength: number,
  a: LauncherAddrs,
): number[] {
  const code: number[] = [];
  const imm32 = (v: number) => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
  const movEdi = (v: number) => code.push(0xbf, ...imm32(v)); // mov edi, imm32 (zero-extends)
  const movEsi = (v: number) => code.push(0xbe, ...imm32(v));
  const movEdx = (v: number) => code.push(0xba, ...imm32(v));
  const movEax = (v: number) => code.push(0xb8, ...imm32(v));
  const syscall = () => code.push(0x0f, 0x05);
  mounts.forEach((m, i) => {
    const [source, target, fstype] = a.mounts[i];
    movEdi(source);
    movEsi(target);
    movEdx(fstype);
    code.push(0x41, 0xba, ...imm32(m.flags)); // mov r10d, flags
    code.push(0x45, 0x31, 0xc0); // xor r8d, r8d: data = NULL
    movEax(165); // mount
    syscall();
  });
  movEdi(a.path);
  movEsi(a.argv);
  movEdx(a.envp);
  movEax(59); // execve: returns only on failure
  syscall();
  movEdi(2);
  movEsi(a.msg);
  movEdx(msgLength);
  movEax(1); // write(2, msg, len)
  syscall();
  movEdi(127);
  movEax(60); // exit(127)
  syscall();
  return code;
}

/** ELF header and the one PT_LOAD (R+X) program header mapping the whole file at `base`. */
function writeElfHeaders(
  v: DataView,
  machine: number,
  base: number,
  entryOff: number,
  total: number,
): void {
  new Uint8Array(v.buffer).set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]); // ELF64, LE, v1, SysV ABI
  v.setUint16(16, 2, true); // ET_EXEC
  v.setUint16(18, machine, true);
  v.setUint32(20, 1, true); // e_version
  v.setBigUint64(24, BigInt(base + entryOff), true); // e_entry
  v.setBigUint64(32, 64n, true); // e_phoff
  v.setUint16(52, 64, true); // e_ehsize
  v.setUint16(54, 56, true); // e_phentsize
  v.setUint16(56, 1, true); // e_phnum
  v.setUint16(58, 64, true); // e_shentsize (no section headers)
  v.setUint32(64, PT_LOAD, true);
  v.setUint32(68, 5, true); // PF_R | PF_X
  v.setBigUint64(72, 0n, true); // p_offset
  v.setBigUint64(80, BigInt(base), true); // p_vaddr
  v.setBigUint64(88, BigInt(base), true); // p_paddr
  v.setBigUint64(96, BigInt(total), true); // p_filesz
  v.setBigUint64(104, BigInt(total), true); // p_memsz
  v.setBigUint64(112, 0x10000n, true); // p_align: 64 KiB, the largest aarch64 page size
}

/**
 * A static x86-64 (or aarch64: spec.machine) ELF that does the given mounts, then execve(path, argv, envp); on failure it
 * writes a line to fd 2 and exits 127 (as PID 1 the kernel then panics with that code, after the
 * message is on the console). Layout: ELF header, one PT_LOAD (R+X) mapping the whole file at
 * 0x400000, code, strings, then the argv/envp pointer arrays. Addresses are absolute (ET_EXEC at a
 * fixed base < 4 GiB), so 32-bit immediates load them.
 */
export function launcherElf(spec: LauncherSpec): Uint8Array {
  const base = 0x400000;
  const enc = new TextEncoder();
  const codeOff = 64 + 56;
  const mounts = spec.mounts ?? [];
  const msg = enc.encode(`netroot /init: execve ${spec.path} failed\n`);
  const machine = spec.machine ?? EM_X86_64;
  if (machine !== EM_X86_64 && machine !== EM_AARCH64) {
    throw new Error(`no launcher for ${machineName(machine)}`);
  }

  // Machine code for given data addresses; emitted once with zeros to learn its length.
  const emit = (a: LauncherAddrs) =>
    (machine === EM_AARCH64 ? launcherCodeA64 : launcherCode)(mounts, msg.length, a);
  const codeLen = emit({ path: 0, argv: 0, envp: 0, msg: 0, mounts: mounts.map(() => [0, 0, 0]) })
    .length;

  const strings: Uint8Array[] = [];
  let strEnd = codeOff + codeLen;
  const place = (b: Uint8Array) => {
    strings.push(b);
    strEnd += b.length;
    return base + strEnd - b.length;
  };
  const placeCString = (s: string) => place(enc.encode(s + "\0"));
  const pathAddr = placeCString(spec.path);
  const argvAddrs = spec.argv.map(placeCString);
  const envAddrs = spec.envp.map(placeCString);
  const mountAddrs = mounts.map((m) => [m.source, m.target, m.fstype].map(placeCString));
  const msgAddr = place(msg);
  const arrOff = strEnd + ((8 - (strEnd % 8)) % 8);
  const argvArr = base + arrOff;
  const envArr = argvArr + 8 * (argvAddrs.length + 1);
  const total = arrOff + 8 * (argvAddrs.length + 1 + envAddrs.length + 1);
  const code = emit({
    path: pathAddr,
    argv: argvArr,
    envp: envArr,
    msg: msgAddr,
    mounts: mountAddrs,
  });

  const out = new Uint8Array(total);
  const v = new DataView(out.buffer);
  writeElfHeaders(v, machine, base, codeOff, total);
  out.set(code, codeOff);
  let o = codeOff + codeLen;
  for (const s of strings) {
    out.set(s, o);
    o += s.length;
  }
  [...argvAddrs, 0, ...envAddrs, 0].forEach((a, i) =>
    v.setBigUint64(arrOff + 8 * i, BigInt(a), true)
  );
  return out;
}
