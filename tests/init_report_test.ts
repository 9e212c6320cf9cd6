import assert from "node:assert/strict";
import { MAX_BATCH } from "../contract/report.ts";
import { loopTimeout, nfsReadBytes, Reporter } from "../overlay/report.ts";

Deno.test("reporter: queued before the network, then sent in one batch over real HTTP", async () => {
  const got: { token: string; mac: string; reports: Record<string, unknown>[] }[] = [];
  let release: () => void = () => {};
  const held = new Promise<void>((r) => release = r);
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    if (req.method !== "POST" || new URL(req.url).pathname !== "/boot/report") {
      return new Response("no", { status: 404 });
    }
    got.push(await req.json());
    if (got.length === 1) await held; // the first answer waits: reports pile up meanwhile
    return new Response(null, { status: 204 });
  });
  try {
    const errors: string[] = [];
    const r = new Reporter({ token: "t", mac: "52:54:00:00:00:01" }, (m) => errors.push(m));
    r.send({ stage: "start", ms: 1, ok: true });
    r.send({ stage: "modules", ms: 20, ok: true, detail: "3 loaded" });
    await new Promise((res) => setTimeout(res, 50));
    r.send({ stage: "network", ms: 5, ok: true, nfsReadBytes: 0 });
    assert.deepEqual(got, []); // no network yet: nothing sent
    r.enable(`http://127.0.0.1:${server.addr.port}`);
    while (got.length === 0) await new Promise((res) => setTimeout(res, 5));
    r.send({ stage: "persist", ok: true });
    r.send({ stage: "handover", ok: true });
    assert.equal(await r.flush(50), false); // the first POST is still unanswered
    release();
    assert.equal(await r.flush(5000), true);
    assert.deepEqual(got, [
      {
        token: "t",
        mac: "52:54:00:00:00:01",
        reports: [
          { stage: "start", ms: 1, ok: true, seq: 1 },
          { stage: "modules", ms: 20, ok: true, detail: "3 loaded", seq: 2 },
          { stage: "network", ms: 5, ok: true, nfsReadBytes: 0, seq: 3 },
        ],
      },
      {
        token: "t",
        mac: "52:54:00:00:00:01",
        reports: [{ stage: "persist", ok: true, seq: 4 }, { stage: "handover", ok: true, seq: 5 }],
      },
    ]);
    assert.deepEqual(errors, []);
  } finally {
    release();
    await server.shutdown();
  }
});

Deno.test("reporter: more reports than a batch holds go in several POSTs, in order", async () => {
  const bodies: { reports: { seq: number }[] }[] = [];
  const r = new Reporter({ token: "t", mac: "m" }, () => {}, (_u, body) => {
    bodies.push(JSON.parse(body));
    return Promise.resolve();
  });
  for (let i = 0; i < MAX_BATCH + 3; i++) r.send({ stage: "hybrid-copy", done: i, total: 100 });
  r.enable("http://10.0.0.1:8080");
  assert.equal(await r.flush(1000), true);
  assert.deepEqual(bodies.map((b) => b.reports.length), [MAX_BATCH, 3]);
  assert.deepEqual(
    bodies.flatMap((b) => b.reports.map((x) => x.seq)),
    Array.from({ length: MAX_BATCH + 3 }, (_, i) => i + 1),
  );
});

Deno.test("reporter: a failed batch is tried once more; a failing server is said once and never blocks beyond the flush bound", async () => {
  const errors: string[] = [];
  const delivered: string[][] = [];
  const seqs: number[][] = [];
  let calls = 0;
  let release: () => void = () => {};
  const gate = new Promise<void>((r) => release = r);
  const r = new Reporter(
    { mac: "52:54:00:00:00:01" },
    (m) => errors.push(m),
    async (_url, body, signal) => {
      calls++;
      const reports = JSON.parse(body).reports as { stage: string; seq: number }[];
      seqs.push(reports.map((x) => x.seq));
      if (calls === 1) throw new Error("HTTP 500"); // a stalled first connection
      if (calls === 2) {
        await gate; // the retry goes through, once the second report is queued behind it
        return void delivered.push(reports.map((x) => x.stage));
      }
      // then a server that never answers: only the abort signal ends it
      await new Promise((_res, rej) => signal.addEventListener("abort", () => rej(signal.reason)));
    },
    200,
  );
  r.enable("http://10.0.0.1:8080");
  r.send({ stage: "start" });
  r.send({ stage: "network" });
  release();
  const t0 = performance.now();
  assert.equal(await r.flush(50), false); // gave up waiting, boot goes on
  assert.ok(performance.now() - t0 < 150);
  assert.equal(await r.flush(2000), true); // the per-request timeouts end the hung ones
  assert.deepEqual(delivered, [["start"]]);
  assert.equal(calls, 4); // start: 2 tries; network: 2 tries
  assert.deepEqual(seqs, [[1], [1], [2], [2]]); // a retry is the same batch: recorded once
  assert.equal(errors.length, 1);
  assert.match(errors[0], /report network to http:\/\/10\.0\.0\.1:8080\/boot\/report failed/);
});

Deno.test("loopTimeout: time the event loop was blocked does not count", async () => {
  const t = loopTimeout(300, 50);
  const end = performance.now() + 600;
  while (performance.now() < end) { /* a synchronous mount or module load */ }
  await new Promise((res) => setTimeout(res, 0));
  assert.equal(t.signal.aborted, false); // 600 ms blocked counted as at most one tick
  const t0 = performance.now();
  await new Promise((res) => t.signal.addEventListener("abort", res));
  const waited = performance.now() - t0;
  assert.ok(waited >= 150 && waited < 1000, `aborted after ${waited} ms of free loop`);
  t.clear();
});

Deno.test("reporter: without netroot.url nothing is sent and flush is immediate", async () => {
  const r = new Reporter({ mac: "m" }, () => {}, () => Promise.reject(new Error("must not post")));
  r.enable(undefined);
  r.send({ stage: "start" });
  assert.equal(r.enabled, false);
  assert.equal(await r.flush(10), true);
});

Deno.test("nfs bytes: server read bytes of nfs and nfs4 mounts only, from mountstats", () => {
  const stats = `device rootfs mounted on / with fstype rootfs
device proc mounted on /proc with fstype proc
device 10.77.0.1:/netroot/images/abc mounted on /run/netroot/lower with fstype nfs4 statvers=1.1
	opts:	ro,vers=4.2,rsize=1048576
	bytes:	1000 0 0 0 123456 0 31 0
	RPC iostats version: 1.1  p/v: 100003/4 (nfs)
device overlay mounted on /newroot with fstype overlay
	bytes:	9 9 9 9 999999 9 9 9
device 10.77.0.1:/netroot/persist/x mounted on /newroot/persist with fstype nfs statvers=1.1
	bytes:	10 20 0 0 4096 20 1 1
`;
  assert.equal(nfsReadBytes(stats), 123456 + 4096);
  assert.equal(nfsReadBytes("device proc mounted on /proc with fstype proc\n"), 0);
});
