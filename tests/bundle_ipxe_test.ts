// The boot loaders travel with the release bundle: packIpxe takes them from Debian's `ipxe`
// package with its licence and source pointer, and a bundled server on a system without
// /usr/lib/ipxe (hidden by an empty tmpfs in a mount namespace of its own) serves them by TFTP and
// HTTP. Needs root (unshare -m) and the Debian package ipxe on the test host (tools/apt-packages).
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import {
  ARM64_IPXE,
  BUNDLED_IPXE_FILES,
  bundledIpxeDir,
  defaultIpxeDir,
  packIpxe,
  SYSTEM_IPXE_DIR,
} from "../src/release/ipxe.ts";
import { tftpGet } from "../netboot/tftp/client.ts";
import { resolveIpxe } from "../netboot/tftp/resolve.ts";
import { denoBundle } from "../src/initramfs/bundle.ts";

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

Deno.test("packIpxe copies Debian's iPXE builds with the copyright file and a source pointer", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-ipxe-pack-" });
  try {
    const { version, files, arm64 } = await packIpxe(dir);
    for (const f of BUNDLED_IPXE_FILES) {
      const st = await Deno.lstat(join(dir, f));
      assert.ok(st.isFile && st.size > 10_000, `${f}: a regular file (links resolved)`);
      assert.equal(
        sha(await Deno.readFile(join(dir, f))),
        sha(await Deno.readFile(join(SYSTEM_IPXE_DIR, f))),
        f,
      );
    }
    assert.match(await Deno.readTextFile(join(dir, "COPYING")), /GPL/);
    const source = await Deno.readTextFile(join(dir, "SOURCE.txt"));
    assert.ok(source.includes(`Debian package ipxe ${version}`), source);
    assert.ok(source.includes(`https://sources.debian.org/src/ipxe/${version}/`), source);
    // The aarch64 loader: Debian's (trixie's package when the system's has none), a PE32+ EFI
    // application for machine 0xaa64, with its own copyright file and version.
    assert.ok(files.includes(ARM64_IPXE), files.join(" "));
    const arm = await Deno.readFile(join(dir, ARM64_IPXE));
    const pe = new DataView(arm.buffer).getUint32(0x3c, true);
    assert.equal(String.fromCharCode(arm[0], arm[1]), "MZ");
    assert.equal(new DataView(arm.buffer).getUint16(pe + 4, true), 0xaa64);
    assert.match(await Deno.readTextFile(join(dir, "COPYING-arm64")), /GPL/);
    assert.ok(
      source.includes(`${ARM64_IPXE} is the Debian package ipxe ${arm64!.version}`),
      source,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("defaultIpxeDir: the system's loaders, else the bundle's, else the system path", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-ipxe-dirs-" });
  try {
    const [system, bundle, none] = ["system", "bundle", "none"].map((d) => join(dir, d));
    for (const d of [system, bundle, none]) await Deno.mkdir(d);
    for (const d of [system, bundle]) {
      for (const f of ["undionly.kpxe", "ipxe.efi"]) await Deno.writeTextFile(join(d, f), d);
    }
    assert.equal(defaultIpxeDir(system, bundle), system);
    assert.equal(defaultIpxeDir(none, bundle), bundle);
    assert.equal(defaultIpxeDir(join(dir, "missing"), bundle), bundle);
    assert.equal(defaultIpxeDir(none, none), none); // start-up warns about the missing files
    assert.equal(defaultIpxeDir(none, undefined), none);
    // Half a bundle is no bundle: BIOS and UEFI both must be there.
    await Deno.remove(join(bundle, "ipxe.efi"));
    assert.equal(defaultIpxeDir(none, bundle), none);
    // Where the bundle's loaders are looked for: beside the bundle file.
    assert.equal(bundledIpxeDir("file:///opt/netroot/netroot.js"), "/opt/netroot/ipxe");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a loader missing from the iPXE dir is served from the fallback (the bundle's)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-ipxe-fallback-" });
  try {
    const [system, bundle] = ["system", "bundle"].map((d) => join(dir, d));
    for (const d of [system, bundle]) await Deno.mkdir(d);
    await Deno.writeTextFile(join(system, "ipxe.efi"), "system x86");
    await Deno.writeTextFile(join(bundle, "ipxe.efi"), "bundle x86");
    await Deno.writeTextFile(join(bundle, ARM64_IPXE), "bundle arm64");
    const file = async (name: string, fallback?: string) => {
      const r = await resolveIpxe(system, [name], fallback);
      return r && "file" in r ? await Deno.readTextFile(r.file) : r && "error" in r ? "404" : r;
    };
    assert.equal(await file("ipxe.efi", bundle), "system x86"); // the system's first
    assert.equal(await file(ARM64_IPXE, bundle), "bundle arm64");
    assert.equal(await file(ARM64_IPXE), "404"); // no fallback: not found
    assert.equal(await file("snponly.efi", bundle), "404"); // in neither
    assert.equal(await file("vmlinuz", bundle), null); // not a loader name: the node's files
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** A free UDP port on loopback (closed again: the server binds it a moment later). */
function freeUdpPort(): number {
  const s = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const port = (s.addr as Deno.NetAddr).port;
  s.close();
  return port;
}

Deno.test("a bundled server on a system without /usr/lib/ipxe serves the bundle's loaders (TFTP, HTTP)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-ipxe-bundle-" });
  let child: Deno.ChildProcess | undefined;
  try {
    const js = join(dir, "netroot.js");
    await denoBundle(new URL("../main.ts", import.meta.url).pathname, js);
    await packIpxe(join(dir, "ipxe"));
    const tftpPort = freeUdpPort();
    // The server's own mount namespace: /usr/lib/ipxe is an empty tmpfs there (checked first).
    const script = `mount -t tmpfs netroot-test ${SYSTEM_IPXE_DIR} && ` +
      `[ -z "$(ls -A ${SYSTEM_IPXE_DIR})" ] && echo "ipxe hidden" >&2 && exec "$@"`;
    child = new Deno.Command("unshare", {
      args: [
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        Deno.execPath(),
        "run",
        "-A",
        "--no-config",
        js,
        "serve",
        "--data",
        join(dir, "data"),
        "--http",
        "127.0.0.1:0",
        "--interface",
        "lo",
        "--dhcp-mode",
        "off",
        "--nfs",
        "off",
        "--ra",
        "false",
        "--tftp-port",
        String(tftpPort),
      ],
      env: { DENO_DIR: join(dir, "deno-dir"), NO_COLOR: "1" },
      stdout: "null",
      stderr: "piped",
    }).spawn();
    let log = "";
    const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
    let port: string | undefined;
    while (!port || !/tftp.*listening/.test(log)) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`server exited:\n${log}`);
      log += value;
      port = /http listening .*port=(\d+)/.exec(log)?.[1];
    }
    assert.match(log, /ipxe hidden/);
    assert.doesNotMatch(log, /iPXE binaries missing/);
    // The host's own /usr/lib/ipxe is untouched (the tmpfs lives in the server's namespace only).
    assert.ok((await Deno.lstat(join(SYSTEM_IPXE_DIR, "undionly.kpxe"))).isFile);
    const bundled = (f: string) => Deno.readFile(join(dir, "ipxe", f));
    // PC BIOS: TFTP undionly.kpxe, as the PXE ROM asks for it.
    const bios = await tftpGet("127.0.0.1", tftpPort, "undionly.kpxe", { timeoutMs: 3000 });
    assert.equal(sha(bios), sha(await bundled("undionly.kpxe")));
    // x86-64 UEFI: TFTP ipxe.efi and snponly.efi, and the UEFI HTTP boot URL.
    for (const f of ["ipxe.efi", "snponly.efi"]) {
      const got = await tftpGet("127.0.0.1", tftpPort, f, { blksize: 1468, timeoutMs: 3000 });
      assert.equal(sha(got), sha(await bundled(f)), f);
    }
    const res = await fetch(`http://127.0.0.1:${port}/boot/ipxe/ipxe.efi`);
    assert.equal(res.status, 200);
    assert.equal(sha(new Uint8Array(await res.arrayBuffer())), sha(await bundled("ipxe.efi")));
    // aarch64 UEFI: TFTP ipxe-arm64.efi (DHCP arch 11 is told that name), and by HTTP (arch 19).
    const arm = await tftpGet("127.0.0.1", tftpPort, ARM64_IPXE, {
      blksize: 1468,
      timeoutMs: 3000,
    });
    assert.equal(sha(arm), sha(await bundled(ARM64_IPXE)));
    const armRes = await fetch(`http://127.0.0.1:${port}/boot/ipxe/${ARM64_IPXE}`);
    assert.equal(sha(new Uint8Array(await armRes.arrayBuffer())), sha(await bundled(ARM64_IPXE)));
    child.kill("SIGTERM");
    assert.equal((await child.status).code, 0);
    child = undefined;
    await reader.cancel();
  } finally {
    try {
      child?.kill("SIGKILL");
      await child?.status;
    } catch { /* exited */ }
    await Deno.remove(dir, { recursive: true });
  }
});
