// Real ext4 on a real loop device for the hybrid tests (root needed: losetup, mount).
export function run(cmd: string, ...args: string[]): string {
  const out = new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).outputSync();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  return new TextDecoder().decode(out.stdout).trim();
}

const EXT4_IOC_SHUTDOWN = 0x8004587dn, EXT4_GOING_FLAGS_NOLOGFLUSH = 2;
let lib:
  | Deno.DynamicLibrary<{
    open: { parameters: ["buffer", "i32", "u32"]; result: "i32" };
    close: { parameters: ["i32"]; result: "i32" };
    ioctl: { parameters: ["i32", "u64", "buffer"]; result: "i32" };
  }>
  | undefined;
const libc = () =>
  (lib ??= Deno.dlopen(
    "libc.so.6",
    {
      open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
      close: { parameters: ["i32"], result: "i32" },
      ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
    } as const,
  )).symbols;

export interface LoopExt4 {
  file: string;
  loop: string; // /dev/loopN
  mnt: string;
  /** sectors written to the loop device so far (/sys/block/loopN/stat field 7) */
  writtenBytes(): number;
  /** A journal commit, as ext4's 5 s timer or any fsync on the file system makes one: metadata
   *  changed so far (renames, links) reaches the disk, the data of files not written back yet
   *  does not. What a power cut right after it keeps is what a real one would. */
  journalCommit(): void;
  /** A power cut: the file system stops at once (EXT4_IOC_SHUTDOWN, no log flush): what is not on
   *  the device yet is lost, every later call on it fails. */
  powerCut(): void;
  /** After a power cut (once its writer has stopped): unmount, mount again (journal replay). */
  powerOn(): void;
  /** What most power-cut tests do after the operation: journalCommit, powerCut, powerOn. */
  cutAfterCommit(): void;
  /** A new directory `name` on the file system, already on the disk (synced), so that a cut
   *  takes back only what the test's operation did in it. */
  freshDir(name: string): Promise<string>;
  close(): Promise<void>;
}

/** fn on a fresh loopExt4, closed after it whatever happens. */
export async function withLoopExt4<T>(
  sizeMiB: number,
  fn: (disk: LoopExt4) => Promise<T>,
): Promise<T> {
  const disk = await loopExt4(sizeMiB);
  try {
    return await fn(disk);
  } finally {
    await disk.close();
  }
}

/** A fresh ext4 file system of sizeMiB on a loop device, mounted. `directIo`: the loop device
 *  writes its image file with O_DIRECT (no page cache of the image file under it: a flush goes
 *  to the disk as it would on a real one, instead of being cached once more and written again). */
export async function loopExt4(
  sizeMiB: number,
  dir?: string,
  opts: { directIo?: boolean } = {},
): Promise<LoopExt4> {
  const dio = opts.directIo ? ["--direct-io=on"] : [];
  const base = dir ?? await Deno.makeTempDir({ prefix: "netroot-ext4-" });
  const file = `${base}/disk.img`;
  const mnt = `${base}/mnt`;
  await Deno.mkdir(mnt, { recursive: true });
  run("truncate", "-s", `${sizeMiB}M`, file);
  run("mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", file);
  let loop = run("losetup", "-f", "--show", ...dio, file);
  try {
    run("mount", "-t", "ext4", loop, mnt);
  } catch (e) {
    run("losetup", "-d", loop);
    throw e;
  }
  let name = loop.replace("/dev/", "");
  return {
    file,
    get loop() {
      return loop;
    },
    mnt,
    writtenBytes() {
      run("sync");
      const f = Deno.readTextFileSync(`/sys/block/${name}/stat`).trim().split(/\s+/).map(Number);
      return f[6] * 512;
    },
    journalCommit() {
      // A change of its own each time: an fsync with nothing new to commit commits nothing.
      Deno.writeTextFileSync(`${mnt}/.journal-commit`, `${performance.now()}\n`);
      const f = Deno.openSync(`${mnt}/.journal-commit`, { write: true });
      f.syncSync();
      f.close();
    },
    powerCut() {
      const fd = libc().open(new TextEncoder().encode(mnt + "\0"), 0o2000000, 0);
      if (fd < 0) throw new Error(`open ${mnt} failed`);
      try {
        const flags = new Uint32Array([EXT4_GOING_FLAGS_NOLOGFLUSH]);
        if (libc().ioctl(fd, EXT4_IOC_SHUTDOWN, new Uint8Array(flags.buffer)) < 0) {
          throw new Error("EXT4_IOC_SHUTDOWN failed");
        }
      } finally {
        libc().close(fd);
      }
    },
    powerOn() {
      for (let i = 0;; i++) {
        try {
          run("umount", mnt);
          break;
        } catch (e) {
          if (i >= 50) throw e;
          run("sleep", "0.1"); // a worker of the interrupted copy may still hold a file open
        }
      }
      // On a new loop device over the same file: another mount namespace made meanwhile (any
      // `ip netns exec`, `unshare -m` on this machine) may hold a copy of the old mount, which
      // keeps the shut-down superblock alive; mounting the same device again would get that one
      // back (every call EIO) instead of replaying the journal.
      try {
        run("losetup", "-d", loop);
      } catch { /* busy: detached when its last user goes */ }
      loop = run("losetup", "-f", "--show", ...dio, file);
      name = loop.replace("/dev/", "");
      run("mount", "-t", "ext4", loop, mnt);
    },
    cutAfterCommit(this: LoopExt4) {
      this.journalCommit();
      this.powerCut();
      this.powerOn();
    },
    async freshDir(name: string) {
      const path = `${mnt}/${name}`;
      await Deno.mkdir(path, { recursive: true });
      run("sync");
      return path;
    },
    async close() {
      // A busy mount (a straggling reader) is detached lazily: never delete `base` while the file
      // system is still mounted below it, or the recursive remove would empty it.
      let unmounted = false;
      for (const args of [[mnt], ["-l", mnt]]) {
        try {
          run("umount", ...args);
          unmounted = true;
          break;
        } catch { /* try the next way */ }
      }
      try {
        run("losetup", "-d", loop); // busy: the kernel detaches it when the last user goes
      } catch { /* already */ }
      if (!dir && unmounted) await Deno.remove(base, { recursive: true }).catch(() => {});
    },
  };
}
