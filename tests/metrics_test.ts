// GET /metrics: the exposition text checked by promtool, and the real Prometheus (Debian package
// `prometheus`) scraping a real server on loopback while a TFTP fetch (tftp-hpa client), a boot
// script fetch and stage reports happen; PromQL over its HTTP API then sees them.
import assert from "node:assert/strict";
import { join } from "node:path";
import { defaultConfig } from "../src/config.ts";
import { eventRecorder, recordEvent } from "../src/events.ts";
import { openBoot } from "../src/boots.ts";
import { metricsFor } from "../src/metrics.ts";
import { buildApp, closeContext, openContext, type RunningServer, serve } from "../src/server.ts";

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

async function startServer(dir: string): Promise<RunningServer> {
  const cfg = defaultConfig();
  cfg.dataDir = join(dir, "data");
  cfg.http = { host: "127.0.0.1", port: 0 };
  cfg.interface = "lo";
  cfg.serverIp = "127.0.0.1";
  cfg.dhcp.mode = "off";
  cfg.ra = false;
  cfg.tftp.port = 0;
  return await serve(cfg);
}

const MAC = "52:54:00:4d:00:01";

/** A TFTP fetch, a refused script fetch, two stage reports and a DHCP event. */
async function traffic(server: RunningServer): Promise<number> {
  const base = `http://127.0.0.1:${server.http.port}`;
  const tftp = server.services.find((s) => s.name === "tftp") as unknown as { port: number };
  const dir = await Deno.makeTempDir({ prefix: "nr-metrics-tftp-" });
  try {
    const out = await new Deno.Command("tftp", {
      args: ["127.0.0.1", String(tftp.port), "-m", "binary", "-c", "get", "undionly.kpxe"],
      cwd: dir,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    const size = (await Deno.stat(join(dir, "undionly.kpxe"))).size;
    assert.equal(size, (await Deno.stat("/usr/lib/ipxe/undionly.kpxe")).size);

    server.ctx.nodes.add(MAC, { name: "m1" });
    const script = await fetch(`${base}/boot/${MAC}.ipxe`);
    await script.body?.cancel();
    const token = openBoot(server.ctx.db, MAC, null);
    // The node reports a fallback from hybrid mode twice, then its outcome again and again, one
    // report at a time and in a numbered batch: each boot is counted once by outcome.
    const reports = [
      { stage: "network", ms: 200, ok: true },
      { stage: "hybrid-failed", ok: false },
      { stage: "hybrid-failed", ok: false },
      { stage: "handover", ms: 1500, ok: true },
      { stage: "handover", ok: true },
      { reports: [1, 2, 3].map((seq) => ({ seq, stage: "handover", ok: true })) },
    ];
    for (const report of reports) {
      const r = await fetch(`${base}/boot/report`, {
        method: "POST",
        body: JSON.stringify({ token, mac: MAC, ...report }),
      });
      assert.equal(r.status, 200, await r.text());
    }
    // A stage name of the node's choosing is not a label of its own.
    const r = await fetch(`${base}/boot/report`, {
      method: "POST",
      body: JSON.stringify({ token, mac: MAC, stage: "made-up-stage", ms: 1 }),
    });
    await r.body?.cancel();
    eventRecorder(server.ctx.db)(MAC, "dhcp.offer", { firmware: "bios" }, Date.now());
    return size;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("/metrics: counters from real traffic, no token needed, valid exposition (promtool)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-metrics-" });
  const server = await startServer(dir);
  try {
    const size = await traffic(server);
    const r = await fetch(`http://127.0.0.1:${server.http.port}/metrics`);
    assert.equal(r.status, 200);
    assert.match(r.headers.get("content-type")!, /^text\/plain; version=0\.0\.4/);
    const text = await r.text();
    const check = new Deno.Command("promtool", {
      args: ["check", "metrics"],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const w = check.stdin.getWriter();
    await w.write(new TextEncoder().encode(text));
    await w.close();
    const res = await check.output();
    const said = new TextDecoder().decode(res.stdout) + new TextDecoder().decode(res.stderr);
    // Exit 0: parsed, and nothing for its lint to say (names, HELP, units).
    assert.equal(res.code, 0, said);
    const has = (line: string) => assert.ok(text.includes(line + "\n"), `${line} in\n${text}`);
    has('netroot_tftp_transfers_total{outcome="done"} 1');
    has(`netroot_tftp_bytes_total ${size}`);
    has('netroot_http_boot_scripts_total{outcome="refused"} 1');
    has('netroot_boots_total{outcome="handover"} 1');
    has('netroot_boots_total{outcome="hybrid-failed"} 1');
    has('netroot_boot_reports_total{stage="handover"} 5');
    has('netroot_boot_reports_total{stage="other"} 1');
    has('netroot_boot_stage_duration_seconds_bucket{stage="handover",le="1"} 0');
    has('netroot_boot_stage_duration_seconds_bucket{stage="handover",le="2.5"} 1');
    has('netroot_boot_stage_duration_seconds_sum{stage="handover"} 1.5');
    has('netroot_dhcp_packets_total{type="offer",firmware="bios"} 1');
    has('netroot_nodes{image="no"} 1');
    assert.doesNotMatch(text, /52:54:00/i, "no MAC in any label");
    assert.match(text, /^netroot_process_memory_bytes\{kind="rss"\} [1-9]\d*$/m);
    assert.match(text, /^netroot_database_bytes [1-9]\d*$/m);
    assert.match(text, /^netroot_nodes_fs_free_bytes [1-9]\d*$/m);
    has("netroot_persist_read_only 0");
    // What the NFS service records when the nodes' file system runs short of room, and after.
    const readOnly = async () =>
      /^netroot_persist_read_only (\d)$/m.exec(
        await (await fetch(`http://127.0.0.1:${server.http.port}/metrics`)).text(),
      )?.[1];
    recordEvent(server.ctx.db, null, "nfs.persist-read-only", {});
    assert.equal(await readOnly(), "1");
    recordEvent(server.ctx.db, null, "nfs.persist-writable", {});
    assert.equal(await readOnly(), "0");
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});

async function query(
  promPort: number,
  q: string,
): Promise<{ metric: Record<string, string>; value: [number, string] }[]> {
  const r = await fetch(
    `http://127.0.0.1:${promPort}/api/v1/query?query=${encodeURIComponent(q)}`,
  );
  const body = await r.json();
  assert.equal(body.status, "success", JSON.stringify(body));
  return body.data.result;
}

Deno.test({
  name: "the real Prometheus scrapes /metrics; PromQL sees the TFTP bytes, boots and stage times",
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "nr-prom-" });
    const server = await startServer(dir);
    const promPort = freePort();
    await Deno.writeTextFile(
      join(dir, "prometheus.yml"),
      `global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: netroot
    metrics_path: /metrics
    static_configs:
      - targets: ["127.0.0.1:${server.http.port}"]
`,
    );
    const log = await Deno.open(join(dir, "prometheus.log"), { write: true, create: true });
    const prom = new Deno.Command("prometheus", {
      args: [
        `--config.file=${join(dir, "prometheus.yml")}`,
        `--storage.tsdb.path=${join(dir, "tsdb")}`,
        `--web.listen-address=127.0.0.1:${promPort}`,
      ],
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const drain = prom.stderr.pipeTo(log.writable);
    try {
      const size = await traffic(server);
      const want: [string, number][] = [
        ['netroot_tftp_transfers_total{outcome="done"}', 1],
        ["netroot_tftp_bytes_total", size],
        ['netroot_boots_total{outcome="handover"}', 1],
        ['netroot_boot_stage_duration_seconds_sum{stage="handover"}', 1.5],
        ['sum(netroot_boot_stage_duration_seconds_count{job="netroot"})', 3],
        ['netroot_http_boot_scripts_total{outcome="refused"}', 1],
        ['netroot_dhcp_packets_total{type="offer",firmware="bios"}', 1],
      ];
      const deadline = Date.now() + 60_000;
      let last = "";
      for (;;) {
        const got: string[] = [];
        for (const [q, v] of want) {
          const res = await query(promPort, q).catch((e) => [{ error: String(e) }]);
          const value = (res[0] as { value?: [number, string] })?.value?.[1];
          if (Number(value) !== v) got.push(`${q} = ${value} (want ${v})`);
        }
        if (!got.length) break;
        last = got.join("; ");
        if (Date.now() > deadline) {
          throw new Error(
            `Prometheus never saw: ${last}\n${await Deno.readTextFile(
              join(dir, "prometheus.log"),
            )}`,
          );
        }
        await new Promise((r) => setTimeout(r, 500));
      }
      const up = await query(promPort, 'up{job="netroot"}');
      assert.equal(up[0].value[1], "1");
    } finally {
      prom.kill("SIGTERM");
      await prom.status;
      await drain.catch(() => {});
      await server.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("/metrics: a node's reports cannot make a counter infinite or swallow later boots (attacker)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nr-metrics-huge-" });
  const ctx = await openContext({ ...defaultConfig(), dataDir: dir });
  try {
    metricsFor(ctx.db); // counting from the first event on, as serve does
    const app = buildApp(ctx);
    const local = {
      remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 40000 },
      completed: Promise.resolve(),
    };
    const post = (text: string) =>
      app.fetch(
        new Request("http://127.0.0.1:8080/boot/report", { method: "POST", body: text }),
        local,
      );
    ctx.nodes.add(MAC, { name: "m1" });
    // Root on a node reads its boot's token from /proc/cmdline and reports what it likes: numbers
    // JSON allows, as large as a double holds, in one batch.
    const token = openBoot(ctx.db, MAC, null);
    const huge = { bytesWritten: 1.7e308, bytesLinked: -5, ms: 1e308 };
    const reports = [1, 2].map((seq) => ({ seq, stage: "hybrid-ready", ...huge }));
    let r = await post(JSON.stringify({ token, mac: MAC, reports }));
    assert.equal(r.status, 200, await r.text());
    // Then a real copy of 4 GB, which the counters must still count.
    const real = { stage: "hybrid-ready", bytesWritten: 4e9, bytesLinked: 2e9, ms: 90_000 };
    r = await post(JSON.stringify({ token: openBoot(ctx.db, MAC, null), mac: MAC, ...real }));
    assert.equal(r.status, 200, await r.text());
    const text = await (await app.fetch(new Request("http://127.0.0.1:8080/metrics"), local))
      .text();
    const value = (series: string) =>
      Number(new RegExp(`^${series.replace(/[{}]/g, "\\$&")} (\\S+)$`, "m").exec(text)?.[1]);
    assert.equal(value('netroot_hybrid_copy_bytes_total{how="written"}'), 4e9, text);
    assert.equal(value('netroot_hybrid_copy_bytes_total{how="linked"}'), 2e9, text);
    assert.equal(value('netroot_boot_stage_duration_seconds_sum{stage="hybrid-ready"}'), 90);
    for (const line of text.split("\n").filter((l) => l && !l.startsWith("#"))) {
      assert.match(line, / \d+(\.\d+)?$/, "every value a plain finite number");
    }
  } finally {
    await closeContext(ctx);
    await Deno.remove(dir, { recursive: true });
  }
});
