// Privileged (root, mount namespace via unshare): mount(2) bindings and the initramfs freeing.
import assert from "node:assert/strict";

const root = new URL("../", import.meta.url).href;
const dec = new TextDecoder();

/** Runs a module body with Deno in a private mount namespace; returns stdout (throws on failure). */
async function inMountNs(code: string): Promise<string> {
  const o = await new Deno.Command("unshare", {
    args: ["--mount", "--", Deno.execPath(), "eval", "--no-config", code],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = dec.decode(o.stdout);
  if (!o.success) throw new Error(`rc ${o.code}: ${text}${dec.decode(o.stderr)}`);
  return text;
}

Deno.test("mount (root, mount ns): freeing a tmpfs root spares mount points and what is below them", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-mount-" });
  const diskDir = await Deno.makeTempDir({ prefix: "nr-mount-disk-" });
  try {
    const out = await inMountNs(`
      import * as m from "${root}src/linux/mount.ts";
      import { freeInitramfs } from "${root}overlay/switchroot.ts";
      const d = ${JSON.stringify(dir)};
      m.mount("t", d, "tmpfs", 0, "mode=0755");
      console.log("tmpfs", m.fsType(d) === m.TMPFS_MAGIC, m.isMountPoint(d));
      Deno.mkdirSync(d + "/netroot/x", { recursive: true });
      Deno.writeFileSync(d + "/netroot/deno", new Uint8Array(100000));
      Deno.writeTextFileSync(d + "/init", "x");
      Deno.symlinkSync("netroot/deno", d + "/link");
      Deno.mkdirSync(d + "/newroot");
      Deno.mkdirSync(d + "/run/deep", { recursive: true });
      m.mount("keep", d + "/newroot", "tmpfs", 0, null);
      Deno.writeTextFileSync(d + "/newroot/kept", "yes");
      m.mount("keep2", d + "/run/deep", "tmpfs", 0, null);
      Deno.writeTextFileSync(d + "/run/deep/kept", "yes");
      console.log("freed", freeInitramfs(d));
      const left = [];
      const walk = (p) => { for (const e of Deno.readDirSync(p)) { left.push((p + "/" + e.name).slice(d.length)); if (e.isDirectory) walk(p + "/" + e.name); } };
      walk(d);
      console.log("left", JSON.stringify(left.sort()));
      // A bind of a disk directory is refused: never delete a real root filesystem.
      Deno.mkdirSync(d + "/disk");
      m.mount(${JSON.stringify(diskDir)}, d + "/disk", null, m.MS_BIND);
      try { freeInitramfs(d + "/disk"); console.log("refused", false); }
      catch (e) { console.log("refused", e.message); }
    `);
    assert.match(out, /^tmpfs true true$/m);
    assert.match(out, /^freed 100013$/m); // deno 100000 + init 1 + the symlink itself 12 (not its target)
    assert.match(
      out,
      /^left \["\/newroot","\/newroot\/kept","\/run","\/run\/deep","\/run\/deep\/kept"\]$/m,
    );
    assert.match(out, /^refused .* is not an initramfs \(statfs type 0xef53\); not freeing$/m);
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(diskDir, { recursive: true });
  }
});

Deno.test("mount (root, mount ns): the read-only view of images/ kernel nfsd exports from", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-mount-view-" });
  try {
    const out = await inMountNs(`
      import { ensureReadOnlyImages } from "${root}src/nfs.ts";
      const d = ${JSON.stringify(dir)};
      const data = { images: d + "/images", imagesReadOnly: d + "/images-ro" };
      Deno.mkdirSync(data.images + "/a/rootfs", { recursive: true });
      Deno.writeTextFileSync(data.images + "/a/rootfs/f", "a");
      const points = () => Deno.readTextFileSync("/proc/self/mountinfo").split("\\n")
        .filter((l) => l.split(" ")[4] === data.imagesReadOnly).length;
      const attempt = (f) => { try { f(); return "ok"; } catch (e) { return e.code ?? e.name; } };
      console.log("first", ensureReadOnlyImages(data), points());
      console.log("reads", Deno.readTextFileSync(data.imagesReadOnly + "/a/rootfs/f"));
      console.log("write", attempt(() => Deno.writeTextFileSync(data.imagesReadOnly + "/a/rootfs/f", "x")));
      console.log("create", attempt(() => Deno.writeTextFileSync(data.imagesReadOnly + "/a/new", "x")));
      console.log("again", ensureReadOnlyImages(data), points());
      const rw = new Deno.Command("mount", { args: ["-o", "remount,bind,rw", data.imagesReadOnly] });
      console.log("made writable", rw.outputSync().success,
        attempt(() => Deno.writeTextFileSync(data.imagesReadOnly + "/a/rw", "x")));
      console.log("writable view", ensureReadOnlyImages(data), points(),
        attempt(() => Deno.writeTextFileSync(data.imagesReadOnly + "/a/rw2", "x")));
      // An image made or removed after the view was mounted: seen at once, removable.
      Deno.mkdirSync(data.images + "/b/rootfs", { recursive: true });
      console.log("new image", Deno.statSync(data.imagesReadOnly + "/b/rootfs").isDirectory);
      Deno.removeSync(data.images + "/a", { recursive: true });
      console.log("removed", attempt(() => Deno.statSync(data.imagesReadOnly + "/a")));
      // Something else mounted there (a stale view of another directory): the images go on top.
      const other = new Deno.Command("mount", { args: ["-t", "tmpfs", "x", data.imagesReadOnly] });
      console.log("covered", other.outputSync().success, ensureReadOnlyImages(data),
        Deno.statSync(data.imagesReadOnly + "/b/rootfs").isDirectory);
      // A symlink there is not followed: a bind through it would cover what it names.
      Deno.mkdirSync(d + "/elsewhere");
      const linked = { images: data.images, imagesReadOnly: d + "/link" };
      Deno.symlinkSync(d + "/elsewhere", linked.imagesReadOnly);
      console.log("symlink", attempt(() => ensureReadOnlyImages(linked)).slice(0, 40),
        Deno.readDirSync(d + "/elsewhere").toArray().length);
    `);
    assert.match(out, /^first mounted 1$/m);
    assert.match(out, /^reads a$/m);
    assert.match(out, /^write EROFS$/m);
    assert.match(out, /^create EROFS$/m);
    assert.match(out, /^again kept 1$/m, "not mounted twice");
    assert.match(out, /^made writable true ok$/m);
    assert.match(out, /^writable view remounted 1 EROFS$/m);
    assert.match(out, /^new image true$/m);
    assert.match(out, /^removed ENOENT$/m);
    assert.match(out, /^covered true mounted true$/m);
    assert.match(out, /^symlink UserError 0$/m);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("hybrid (root, mount ns): an overlay the kernel refuses on the local copy falls back to network mode with nothing of it left mounted", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-mount-hybrid-" });
  try {
    const out = await inMountNs(`
      import * as m from "${root}src/linux/mount.ts";
      import { enterLocalRoot } from "${root}hybrid/mod.ts";
      const d = ${JSON.stringify(dir)};
      const layout = { root: d, newRoot: d + "/newroot", lower: d + "/run/lower", rw: d + "/run/rw",
        upper: d + "/run/upper" };
      for (const p of ["newroot", "run/lower", "part"]) Deno.mkdirSync(d + "/" + p, { recursive: true });
      const mounts = () => Deno.readTextFileSync("/proc/self/mountinfo").split("\\n")
        .map((l) => l.split(" ")[4]).filter((p) => p && p.startsWith(d + "/"));
      const boot = (lower, withInit = false) => {
        m.mount("image", layout.lower, "tmpfs", 0, null); // the NFS image the copy came from
        m.mount("disk", d + "/part", "tmpfs", 0, null); // the walt-hybrid partition
        for (const p of ["copy", "upper", "work"]) Deno.mkdirSync(d + "/part/" + p);
        Deno.writeTextFileSync(d + "/part/copy/etc-release", "v1");
        if (withInit) {
          Deno.mkdirSync(d + "/part/copy/sbin");
          Deno.writeTextFileSync(d + "/part/copy/sbin/init", "#!/bin/sh\\n", { mode: 0o755 });
        }
        return { variant: "volatile", lower, upper: d + "/part/upper", work: d + "/part/work",
          report: {}, evicted: [], target: { mountpoint: d + "/part" } };
      };
      const lines = [], reports = [];
      const o = { log: (l) => lines.push(l), report: (r) => reports.push(r) };
      // The copy the kernel will not take as the overlay's lower layer (here: gone by then).
      const refused = enterLocalRoot(boot(d + "/part/gone"), layout, o);
      console.log(JSON.stringify({ refused, lines, reports, left: mounts() }));
      // A copy the kernel takes but whose root has no init (a file of a complete copy gone since
      // it was verified): network mode too, not a handover that fails at every boot.
      lines.length = 0, reports.length = 0;
      const noInit = enterLocalRoot(boot(d + "/part/copy"), layout, o, "/sbin/init");
      console.log(JSON.stringify({ noInit, lines, reports, left: mounts() }));
      // The same with a copy it takes: the root is mounted, the image's NFS mount let go.
      const ok = enterLocalRoot(boot(d + "/part/copy", true), layout, o, "/sbin/init");
      console.log(JSON.stringify({ ok, release: Deno.readTextFileSync(layout.newRoot + "/etc-release"),
        left: mounts() }));
    `);
    const [failed, missing, entered] = out.trim().split("\n").map((l) => JSON.parse(l));
    assert.equal(missing.noInit, false, "network mode, not a fatal handover");
    assert.match(
      missing.lines.join("\n"),
      /^HYBRID MODE FAILED: the local copy's init: \/sbin\/init is missing or not executable there — falling back to network mode$/m,
    );
    assert.deepEqual(missing.reports.map((r: { reason: string }) => r.reason), ["init"]);
    assert.deepEqual(missing.left, [], "nothing of the hybrid root left mounted");
    assert.equal(failed.refused, false, "network mode, not a fatal failure");
    assert.match(
      failed.lines.join("\n"),
      /^HYBRID MODE FAILED: the local copy's overlay: .* falling back to network mode$/m,
    );
    assert.equal(failed.reports.length, 1);
    assert.equal(failed.reports[0].stage, "hybrid-failed");
    assert.equal(failed.reports[0].reason, "overlay");
    assert.deepEqual(
      failed.left,
      [],
      "the image's mount and the partition let go, nothing mounted",
    );
    assert.equal(entered.ok, true);
    assert.equal(entered.release, "v1");
    assert.deepEqual(entered.left.sort(), [`${dir}/newroot`, `${dir}/part`, `${dir}/run/upper`]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
