// netroot as a systemd service, for real: a Debian bookworm tree with systemd (the minbase cache
// of tests/support/minbase.ts, under a throw-away overlay: the cache is never written) boots in
// systemd-nspawn with no network but loopback. A unit in it runs the checks below at boot, writes
// one line per check to a directory bound from here, and powers the container off:
//   install-service from the release bundle (deno + netroot.js + netroot-init.js), Type=notify
//   start, the installed `netroot` command reaching the API, journal lines without timestamps with
//   their priorities, restart (a new process, READY again), the watchdog (WatchdogSec=2: still the
//   same process after 6 s, i.e. pinged), an upgrade by re-install keeping the data, a backup while
//   serving, a start that keeps failing ending after StartLimitBurst tries, a clean stop, and uninstall-service keeping settings and data.
// Needs root, systemd-nspawn (systemd-container) and debootstrap (first run: ≈ 2 min to build the
// cache).
import assert from "node:assert/strict";
import { realpathSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { minbaseTree } from "./support/minbase.ts";

const root = fileURLToPath(new URL("..", import.meta.url));

const checks = `#!/bin/sh
# Runs at boot in the container; one line per check in /results/log, then power off.
export HOME=/root DENO_NO_UPDATE_CHECK=1 NO_COLOR=1
R=/results/log
ok() { echo "ok $1" >> $R; }
check() {
  name=$1; shift
  if out=$("$@" 2>&1); then ok "$name"; else echo "FAIL $name: $(echo "$out" | tail -c 600 | tr '\\n' '|')" >> $R; fi
}
since() { awk "BEGIN { printf \\"%.2f\\", $(date +%s.%N) - $1 }"; }
t0=$(date +%s.%N)
check install /opt/netroot/deno run -A --no-config /opt/netroot/netroot.js install-service
echo "time install+start $(since $t0) s" >> $R
check active systemctl is-active --quiet netroot
check notify-type sh -c '[ "$(systemctl show -p Type --value netroot)" = notify ]'
check files test -x /usr/local/lib/netroot/deno -a -f /usr/local/lib/netroot/netroot.js \\
  -a -f /usr/local/lib/netroot/netroot-init.js -a -f /etc/netroot/config.json \\
  -a -f /var/lib/netroot/token -a -f /usr/local/share/bash-completion/completions/netroot
check api-command netroot node add 52:54:00:aa:bb:cc --name svc-n1
# journal: no timestamps, and priorities from the <N> prefixes (a warning: a token readable by all)
chmod 644 /var/lib/netroot/token
pid1=$(systemctl show -p MainPID --value netroot)
t0=$(date +%s.%N)
check restart systemctl restart netroot
echo "time restart $(since $t0) s" >> $R
pid2=$(systemctl show -p MainPID --value netroot)
check restart-new-process test "$pid1" != "$pid2" -a "$pid2" != 0
check journal-text sh -c 'journalctl -u netroot -o cat | grep -q "^INFO serve http listening"'
check journal-no-timestamps sh -c '! journalctl -u netroot -o cat | grep -Eq "^(<[0-9]>)?[0-9]{4}-[0-9]{2}-"'
check journal-warning sh -c 'journalctl -u netroot -p warning -o cat | grep -q "^WARN api token file was readable"'
check journal-info-not-warning sh -c '! journalctl -u netroot -p warning -o cat | grep -q "^INFO"'
# the watchdog: without pings systemd would kill it after 2 s and restart it (a new MainPID)
mkdir -p /etc/systemd/system/netroot.service.d
printf '[Service]\\nWatchdogSec=2\\n' > /etc/systemd/system/netroot.service.d/watchdog.conf
systemctl daemon-reload
check watchdog-restart systemctl restart netroot
pid3=$(systemctl show -p MainPID --value netroot)
sleep 6
check watchdog-pinged sh -c "[ \\"\\$(systemctl show -p MainPID --value netroot)\\" = $pid3 ] && [ \\"\\$(systemctl show -p NRestarts --value netroot)\\" = 0 ] && systemctl is-active --quiet netroot"
# upgrade: install again (the drop-in stays), the service restarts on it and keeps its data
check reinstall /opt/netroot/deno run -A --no-config /opt/netroot/netroot.js install-service
check reinstall-new-process sh -c "[ \\"\\$(systemctl show -p MainPID --value netroot)\\" != $pid3 ]"
check reinstall-kept-data sh -c 'netroot node show svc-n1 | grep -q 52:54:00:aa:bb:cc'
check reinstall-kept-dropin test -f /etc/systemd/system/netroot.service.d/watchdog.conf
check backup-while-serving netroot backup /results/backup.tar.gz
# a start that always fails (a settings file that is not there) ends after StartLimitBurst tries,
# failed, not in a new try every few seconds for ever (RestartSec shortened here, not the limit)
printf '[Service]\\nRestartSec=100ms\\nExecStart=\\nExecStart=/usr/local/lib/netroot/deno run -A --no-config /usr/local/lib/netroot/netroot.js serve --config /nonexistent.json\\n' > /etc/systemd/system/netroot.service.d/failing.conf
systemctl daemon-reload
systemctl restart netroot 2>/dev/null
for i in $(seq 120); do systemctl is-failed --quiet netroot && break; sleep 0.5; done
sleep 2 # no further try
echo "restarts before the limit $(systemctl show -p NRestarts --value netroot)" >> $R
check start-limit sh -c 'systemctl is-failed --quiet netroot && [ "$(systemctl show -p NRestarts --value netroot)" -ge 9 ] && journalctl -u netroot -o cat | grep -q "cannot read config file /nonexistent.json"'
rm /etc/systemd/system/netroot.service.d/failing.conf
systemctl daemon-reload
systemctl reset-failed netroot
check start-after-fix systemctl start netroot
t0=$(date +%s.%N)
check stop systemctl stop netroot
echo "time stop $(since $t0) s" >> $R
check stop-clean sh -c '[ "$(systemctl show -p Result --value netroot)" = success ] && [ "$(systemctl show -p ExecMainStatus --value netroot)" = 0 ]'
check stop-logged sh -c 'journalctl -u netroot -o cat | grep -q "^INFO serve stopped"'
check uninstall netroot uninstall-service
check uninstall-removed sh -c '! test -e /etc/systemd/system/netroot.service && ! test -e /usr/local/lib/netroot && ! test -e /usr/local/bin/netroot'
check uninstall-kept test -f /var/lib/netroot/netroot.db -a -f /etc/netroot/config.json
check uninstall-unknown sh -c '! systemctl is-enabled --quiet netroot'
echo DONE >> $R
systemctl --no-block poweroff
`;

const unit = `[Unit]
Description=netroot service checks
After=multi-user.target

[Service]
Type=idle
ExecStart=/usr/local/sbin/netroot-service-checks
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
`;

async function run(cmd: string, args: string[], opts: { cwd?: string } = {}): Promise<void> {
  const o = await new Deno.Command(cmd, { args, cwd: opts.cwd, stderr: "piped", stdout: "null" })
    .output();
  assert.ok(o.success, `${cmd} ${args.join(" ")}: ${new TextDecoder().decode(o.stderr)}`);
}

const expected = [
  "install",
  "active",
  "notify-type",
  "files",
  "api-command",
  "restart",
  "restart-new-process",
  "journal-text",
  "journal-no-timestamps",
  "journal-warning",
  "journal-info-not-warning",
  "watchdog-restart",
  "watchdog-pinged",
  "reinstall",
  "reinstall-new-process",
  "reinstall-kept-data",
  "reinstall-kept-dropin",
  "backup-while-serving",
  "start-limit",
  "start-after-fix",
  "stop",
  "stop-clean",
  "stop-logged",
  "uninstall",
  "uninstall-removed",
  "uninstall-kept",
  "uninstall-unknown",
];

Deno.test("install-service in a booted systemd container: start, restart, watchdog, upgrade, stop, uninstall", async () => {
  assert.equal(Deno.uid(), 0, "this test needs root (overlay mount, systemd-nspawn)");
  const base = await minbaseTree();
  const dir = await Deno.makeTempDir({ prefix: "nr-nspawn-" });
  const tree = join(dir, "root");
  let mounted = false;
  try {
    // The release: the two bundles and the pinned deno, as `deno task bundle` ships them.
    const release = join(dir, "release");
    await Deno.mkdir(release);
    await run(Deno.execPath(), [
      "bundle",
      "--quiet",
      "--platform",
      "deno",
      "-o",
      join(release, "netroot.js"),
      "main.ts",
    ], { cwd: root });
    await run(Deno.execPath(), [
      "bundle",
      "--quiet",
      "--platform",
      "deno",
      "-o",
      join(release, "netroot-init.js"),
      "overlay/node_main.ts",
    ], { cwd: root });
    await Deno.writeTextFile(join(release, "deno"), ""); // mount point of the deno binary
    const results = join(dir, "results");
    for (const d of ["upper", "work", "root", "results"]) await Deno.mkdir(join(dir, d));
    await run("mount", [
      "-t",
      "overlay",
      "overlay",
      "-o",
      `lowerdir=${base},upperdir=${join(dir, "upper")},workdir=${join(dir, "work")}`,
      tree,
    ]);
    mounted = true;
    await Deno.mkdir(join(tree, "usr/local/sbin"), { recursive: true });
    await Deno.writeTextFile(join(tree, "usr/local/sbin/netroot-service-checks"), checks, {
      mode: 0o755,
    });
    await Deno.chmod(join(tree, "usr/local/sbin/netroot-service-checks"), 0o755);
    await Deno.writeTextFile(join(tree, "etc/systemd/system/netroot-service-checks.service"), unit);
    const wants = join(tree, "etc/systemd/system/multi-user.target.wants");
    await Deno.mkdir(wants, { recursive: true });
    await Deno.symlink(
      "../netroot-service-checks.service",
      join(wants, "netroot-service-checks.service"),
    );
    await Deno.mkdir(join(tree, "opt/netroot"), { recursive: true });

    const started = performance.now();
    const nspawn = new Deno.Command("systemd-nspawn", {
      args: [
        "--boot",
        "--register=no",
        "--keep-unit",
        "--private-network",
        "--quiet",
        "-D",
        tree,
        `--bind-ro=${release}:/opt/netroot`,
        `--bind-ro=${realpathSync(Deno.execPath())}:/opt/netroot/deno`,
        `--bind=${results}:/results`,
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { SYSTEMD_COLORS: "0" },
    }).spawn();
    const timer = setTimeout(() => nspawn.kill("SIGKILL"), 180_000);
    const out = await nspawn.output();
    clearTimeout(timer);
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    const console_ = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    const log = await Deno.readTextFile(join(results, "log")).catch(() => "(no results)");
    const lines = log.trim().split("\n");
    const failed = lines.filter((l) => l.startsWith("FAIL"));
    assert.deepEqual(
      failed,
      [],
      `${log}\n--- container console (last lines):\n${console_.slice(-3000)}`,
    );
    assert.equal(lines.at(-1), "DONE", `${log}\n--- console:\n${console_.slice(-3000)}`);
    assert.deepEqual(lines.filter((l) => l.startsWith("ok ")).map((l) => l.slice(3)), expected);
    // The backup taken while serving is a file this host can read.
    assert.ok((await Deno.stat(join(results, "backup.tar.gz"))).size > 0);
    const times = lines.filter((l) => l.startsWith("time ")).map((l) => l.slice(5));
    console.log(`container run: ${seconds} s; ${times.join(", ")}`);
  } finally {
    if (mounted) await run("umount", [tree]).catch(() => run("umount", ["-l", tree]));
    await Deno.remove(dir, { recursive: true });
  }
});
