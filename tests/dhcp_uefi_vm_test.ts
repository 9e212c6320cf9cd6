// Real firmware, UEFI: OVMF's own PXE client (EDK2 network stack; the NIC's iPXE option ROM is
// disabled with romfile=) boots against netroot: DHCP (arch 7) → TFTP of ipxe.efi → iPXE (EFI)
// → DHCP as iPXE → its per-node script over HTTP, in proxy mode beside the lab's dnsmasq with the
// option 43 strategy. Full mode and the port 4011 strategy are proven further, to the image's init,
// by tests/e2e/uefi_boot_test.ts (which also boots OVMF's HTTP boot client).
// Needs root, qemu (TCG) and the Debian package `ovmf`.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import type { ServerConfig } from "../src/config.ts";
import { bootLan, bootUntilScript, dhcpEvents, startServer } from "./dhcp_netns.ts";

const ignore = Deno.env.get("NETROOT_SKIP_VM") === "1";
const CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd", VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd";

async function uefiBoot(
  tag: string,
  net: string,
  dhcp: Partial<ServerConfig["dhcp"]>,
  check: (kinds: string[], ev: ReturnType<typeof dhcpEvents>, leases?: string) => void,
) {
  if (!existsSync(CODE)) throw new Error(`${CODE} missing: install the Debian package ovmf`);
  const lan = await bootLan(tag, net, { labDhcp: dhcp.mode === "proxy" });
  const vars = await Deno.makeTempFile({ suffix: ".fd" });
  let server;
  try {
    await Deno.copyFile(VARS, vars);
    server = await startServer(lan, {
      dhcp: {
        leaseSeconds: 3600,
        proxyStrategy: "option43",
        registerUnknown: true,
        ...dhcp,
      },
      ra: true,
    } as Partial<ServerConfig>);
    const mac = `52:54:00:${net.split(".")[1]}:00:01`;
    const s = await bootUntilScript(lan, server.dataDir, mac, [
      "-drive",
      `if=pflash,format=raw,readonly=on,file=${CODE}`,
      "-drive",
      `if=pflash,format=raw,file=${vars}`,
    ], `virtio-net-pci,netdev=n0,mac=${mac},romfile=`);
    console.log(`${tag}: UEFI PXE → iPXE → script in ${s.toFixed(1)} s`);
    const ev = dhcpEvents(server.dataDir, mac);
    check(
      ev.map((e) => `${e.kind}:${e.detail.firmware ?? ""}`),
      ev,
      lan.dnsmasqLeases && await Deno.readTextFile(lan.dnsmasqLeases),
    );
  } finally {
    await server?.stop();
    await lan.close();
    await Deno.remove(vars);
  }
}

Deno.test({
  name: "OVMF UEFI PXE (root, VM): proxy mode, option 43 strategy, beside dnsmasq",
  ignore,
  fn: () =>
    uefiBoot(
      "uefio",
      "10.97.0",
      { mode: "proxy", proxyStrategy: "option43" },
      (kinds, _ev, leases) => {
        assert.deepEqual(kinds.filter((k) => k.startsWith("dhcp.")), [
          "dhcp.proxy-offer:uefi64",
          "dhcp.proxy-offer:ipxe",
        ]);
        assert.match(leases!, /52:54:00:97:00:01 10\.97\.0\.1\d\d/);
      },
    ),
});
