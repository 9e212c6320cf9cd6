// The release path proven here: `deno bundle` of main.ts is one JS file that runs the server with
// only the deno binary (no config, no import map, empty DENO_DIR).
import assert from "node:assert/strict";
import { denoBundle } from "../src/initramfs/bundle.ts";

Deno.test("the server bundle (deno bundle main.ts) serves the API from one file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-bundle-" });
  let child: Deno.ChildProcess | undefined;
  try {
    const js = `${dir}/netroot.js`;
    await denoBundle(new URL("../main.ts", import.meta.url).pathname, js);
    assert.doesNotMatch(await Deno.readTextFile(js), /^import .*from "(npm:|jsr:|https?:)/m);
    child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--no-config",
        js,
        "serve",
        "--data",
        `${dir}/data`,
        "--http",
        "127.0.0.1:0",
      ],
      env: { DENO_DIR: `${dir}/deno-dir`, NO_COLOR: "1" },
      stdout: "null",
      stderr: "piped",
    }).spawn();
    // The log line `http listening … port=N` tells the port the kernel gave.
    let log = "";
    const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
    let port: string | undefined;
    while (!port) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`server exited:\n${log}`);
      log += value;
      port = /http listening .*port=(\d+)/.exec(log)?.[1];
    }
    const health = await (await fetch(`http://127.0.0.1:${port}/api/v1/health`)).json();
    assert.equal(health.ok, true);
    child.kill("SIGTERM");
    assert.equal((await child.status).code, 0);
    await reader.cancel();
  } finally {
    try {
      child?.kill("SIGKILL");
    } catch { /* exited */ }
    await Deno.remove(dir, { recursive: true });
  }
});

// The TFTP transfer workers run from source text that the bundler may have rewritten (it renames
// top-level functions that collide with others in the bundle): a bundled server must still serve.
Deno.test("a bundled TFTP server's transfer workers serve a file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-bundle-tftp-" });
  try {
    const file = new Uint8Array(100_000).map((_, i) => (i * 7) & 0xff);
    await Deno.writeFile(`${dir}/f`, file);
    // Same names as the worker's functions in a module bundled before the engine: the bundler
    // keeps them here and renames the worker's (as it does for main.ts: openLibc2, errno2).
    await Deno.writeTextFile(
      `${dir}/names.ts`,
      "export function workerMain() {}\nexport function openLibc() {}\nexport function errno() {}",
    );
    const entry = `${dir}/entry.ts`;
    const mod = (p: string) => JSON.stringify(new URL(p, import.meta.url).pathname);
    await Deno.writeTextFile(
      entry,
      `import * as names from "./names.ts";
import { createTftpServer } from ${mod("../netboot/tftp/server.ts")};
import { tftpGet } from ${mod("../netboot/tftp/client.ts")};
if (![names.workerMain, names.openLibc, names.errno].every((f) => typeof f === "function")) {
  throw new Error("names.ts not bundled");
}
const server = await createTftpServer({ port: 0, host: "127.0.0.1",
  resolve: (p) => Promise.resolve({ file: ${JSON.stringify(dir)} + "/" + p }) });
try {
  for (const windowsize of [1, 4]) {
    const got = await tftpGet("127.0.0.1", server.port, "f", { blksize: 1024, windowsize });
    console.log("got", got.length, got.reduce((a, b) => (a * 31 + b) >>> 0, 0));
  }
} finally {
  await server.close();
}`,
    );
    const js = `${dir}/out.js`;
    await denoBundle(entry, js);
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--no-config", js],
      cwd: dir,
      env: { DENO_DIR: `${dir}/deno-dir`, NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const sum = file.reduce((a, b) => (a * 31 + b) >>> 0, 0);
    assert.equal(
      new TextDecoder().decode(r.stdout).trim(),
      `got ${file.length} ${sum}\ngot ${file.length} ${sum}`,
      new TextDecoder().decode(r.stderr),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deno bundle without its esbuild and without a network (root, netns): the error says how to get it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "netroot-bundle-offline-" });
  try {
    await Deno.writeTextFile(`${dir}/entry.ts`, `console.log("x");\n`);
    // A child in a network namespace of its own (no route anywhere), with an empty DENO_DIR.
    const child = `import { denoBundle } from ${
      JSON.stringify(new URL("../src/initramfs/bundle.ts", import.meta.url).href)
    };
try { await denoBundle(${JSON.stringify(`${dir}/entry.ts`)}, ${
      JSON.stringify(`${dir}/out.js`)
    }); console.log("bundled"); }
catch (e) { console.log(e.message); }`;
    const r = await new Deno.Command("unshare", {
      args: ["-n", Deno.execPath(), "eval", child],
      env: { DENO_DIR: `${dir}/deno-dir`, NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const out = new TextDecoder().decode(r.stdout);
    assert.match(out, /^deno bundle failed: /, new TextDecoder().decode(r.stderr));
    assert.match(out, /fetches its esbuild from npm once: run \.\/netroot once/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
