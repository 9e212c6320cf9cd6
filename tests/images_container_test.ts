// A RUN step (or the image's own /bin/sh under `image shell`) is hostile: what it can do to the
// server through systemd-nspawn. Root in the container kept CAP_SYS_ADMIN, so it remounted
// nspawn's read-only /proc/sys and the host's bind-mounted /etc/resolv.conf read-write: it wrote
// the server's resolv.conf and host-wide sysctls (kernel.core_pattern runs a program as the
// host's root). Only the remounts are tried here (inside the container's own mount namespace,
// nothing written): they must be refused. Nor may it reach the server's devices (its disks) through a
// device node the image ships or one it makes.
import assert from "node:assert/strict";
import { build } from "../src/images/build.ts";
import { fixTimes, tempStore } from "./images_helpers.ts";

const busybox = new URL("../.work/busybox/busybox", import.meta.url).pathname;

/** The paths of the shared libraries `program` loads (ldd), its loader included. */
function sharedLibraries(program: string): string[] {
  const out = new Deno.Command("ldd", { args: [program] }).outputSync();
  assert.ok(out.success, `ldd ${program}`);
  return [...new TextDecoder().decode(out.stdout).matchAll(/(\/\S+) \(0x/g)].map((m) => m[1]);
}

Deno.test("image build: a RUN step cannot remount /proc/sys or the host's /etc/resolv.conf read-write, nor open a host device", async () => {
  assert.equal(Deno.uid(), 0, "needs root (overlayfs, systemd-nspawn)");
  const t = await tempStore();
  try {
    const root = `${t.dir}/src`;
    for (const d of ["bin", "usr", "etc"]) Deno.mkdirSync(`${root}/${d}`, { recursive: true });
    Deno.copyFileSync(busybox, `${root}/bin/busybox`);
    Deno.chmodSync(`${root}/bin/busybox`, 0o755);
    Deno.symlinkSync("busybox", `${root}/bin/sh`);
    Deno.writeTextFileSync(`${root}/etc/os-release`, "ID=netroot-test\n");
    // an image may ship any device node: here the host's kernel log (1:11; only opened, not read)
    const made = new Deno.Command("mknod", { args: [`${root}/etc/kmsg`, "c", "1", "11"] })
      .outputSync();
    assert.ok(made.success, "mknod");
    fixTimes(root);
    await t.store.import(root, "bb");
    const ctx = `${t.dir}/ctx`;
    Deno.mkdirSync(ctx);
    const lines: string[] = [];
    const attempt = (text: string) => {
      Deno.writeTextFileSync(`${ctx}/Buildfile`, text);
      return build(t.store, {
        name: "bb",
        buildfile: `${ctx}/Buildfile`,
        context: ctx,
        command: null,
        log: (l) => void lines.push(l),
      });
    };
    // the capabilities that made every remount (bit 21), a node for a host device (27) and raw
    // sockets on the server's network (13) possible: gone from the effective set
    await attempt(
      "FROM bb\nRUN c=$(/bin/busybox awk '/^CapEff/ { print $2 }' /proc/self/status); " +
        "echo CapEff $c; exit $(( (0x$c >> 21 & 1) + (0x$c >> 27 & 1) + (0x$c >> 13 & 1) ))\n",
    );
    assert.ok(lines.some((l) => /CapEff [0-9a-f]{16}/.test(l)), lines.join("\n"));
    await assert.rejects(
      attempt("FROM bb\nRUN /bin/busybox mount -o remount,rw /proc/sys\n"),
      /line 2 failed: RUN .*: exit code \d+; nothing committed/,
      "/proc/sys stays read-only",
    );
    await assert.rejects(
      attempt("FROM bb\nRUN /bin/busybox mount -o remount,bind,rw /etc/resolv.conf\n"),
      /line 2 failed: RUN .*: exit code \d+; nothing committed/,
      "the host's resolv.conf stays read-only",
    );
    // The host's devices: through the image's own node (the tree is mounted nodev), through one
    // made in nspawn's /dev (a tmpfs that allows devices) or in the tree.
    await assert.rejects(
      attempt("FROM bb\nRUN exec 3</etc/kmsg\n"),
      /line 2 failed: RUN .*: exit code \d+; nothing committed/,
      "the image's device node does not open",
    );
    for (const at of ["/dev/kmsg2", "/etc/kmsg2"]) {
      await assert.rejects(
        attempt(`FROM bb\nRUN /bin/busybox mknod ${at} c 1 11 && exec 3<${at}\n`),
        /line 2 failed: RUN .*: exit code \d+; nothing committed/,
        `no device node made at ${at}`,
      );
    }
    // an ordinary step still runs
    const v = await attempt("FROM bb\nRUN echo ok > /etc/ok\n");
    assert.equal(Deno.readTextFileSync(`${t.data.rootfs(v.id)}/etc/ok`), "ok\n");
  } finally {
    await t.close();
  }
});

Deno.test("image build: a RUN step that makes files immutable or append-only (chattr +i/+a) commits them without the flags, nothing stuck in the data dir", async () => {
  assert.equal(Deno.uid(), 0, "needs root (overlayfs, systemd-nspawn)");
  const t = await tempStore();
  try {
    const root = `${t.dir}/src`;
    for (const d of ["bin", "etc"]) Deno.mkdirSync(`${root}/${d}`, { recursive: true });
    Deno.copyFileSync(busybox, `${root}/bin/busybox`);
    Deno.chmodSync(`${root}/bin/busybox`, 0o755);
    Deno.symlinkSync("busybox", `${root}/bin/sh`);
    // e2fsprogs' chattr and lsattr, as every Debian image has them (busybox has no such
    // applets): the host's, with the libraries they link
    for (const f of ["/usr/bin/chattr", "/usr/bin/lsattr", ...sharedLibraries("/usr/bin/chattr")]) {
      Deno.mkdirSync(`${root}${f.slice(0, f.lastIndexOf("/"))}`, { recursive: true });
      Deno.copyFileSync(f, `${root}${f}`);
    }
    fixTimes(root);
    await t.store.import(root, "bb");
    const ctx = `${t.dir}/ctx`;
    Deno.mkdirSync(ctx);
    Deno.writeTextFileSync(
      `${ctx}/Buildfile`,
      "FROM bb\nRUN mkdir -p /var/app && echo x > /etc/locked && /usr/bin/chattr +i /etc/locked && " +
        "/usr/bin/chattr +a /var/app && /usr/bin/lsattr -d /etc/locked /var/app\n",
    );
    const lines: string[] = [];
    const v = await build(t.store, {
      name: "bb",
      buildfile: `${ctx}/Buildfile`,
      context: ctx,
      command: null,
      log: (l) => void lines.push(l),
    });
    // In the container the flags hold (overlayfs keeps them as its own attribute on the upper,
    // since Linux 5.15, not as the upper's inode flags, which would make the session's files
    // impossible to move into the object store or to remove).
    assert.ok(lines.some((l) => /^\s*\S*i\S* \/etc\/locked$/.test(l)), lines.join("\n"));
    assert.ok(lines.some((l) => /^\s*\S*a\S* \/var\/app$/.test(l)), lines.join("\n"));
    assert.equal(Deno.readTextFileSync(`${t.data.rootfs(v.id)}/etc/locked`), "x\n");
    const manifest = Deno.readTextFileSync(t.data.manifest(v.id));
    assert.doesNotMatch(manifest, /overlay/, "no overlay attribute in the image");
    const found = new Deno.Command("sh", {
      args: ["-c", `find "$1" -xdev \\( -type f -o -type d \\) -exec lsattr -d {} +`, "-", t.dir],
      stderr: "null",
    }).outputSync();
    const flagged = new TextDecoder().decode(found.stdout).split("\n")
      .filter((l) => /^\S*[ia]\S* /.test(l));
    assert.deepEqual(flagged, [], "no immutable or append-only entry in the data dir");
  } finally {
    await t.close();
  }
});
