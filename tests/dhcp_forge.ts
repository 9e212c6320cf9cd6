// Forged DHCP traffic from a hostile host (tests/dhcp_flood_test.ts runs it in the client
// namespace): --discovers N sends N PXE DISCOVERs from random MACs; --decline IP sends one
// DECLINE of IP naming --server, from --mac (else a random MAC). From UDP port 68 on --device,
// broadcast.
import { parseArgs } from "node:util";
import { UdpSocket } from "../src/linux/udp.ts";
import { MessageType } from "../netboot/dhcp4/options.ts";
import { encode } from "../netboot/dhcp4/packet.ts";
import { clientPacket } from "../netboot/storm.ts";

const { values: a } = parseArgs({
  args: Deno.args,
  options: {
    device: { type: "string" },
    discovers: { type: "string", default: "0" },
    decline: { type: "string" },
    server: { type: "string" },
    mac: { type: "string" },
  },
});

/** A random unicast, locally administered MAC: what a flood tool makes up. */
function randomMac(): Uint8Array {
  const mac = crypto.getRandomValues(new Uint8Array(6));
  mac[0] = (mac[0] & 0xfc) | 0x02;
  return mac;
}

const sock = UdpSocket.open({ port: 68, device: a.device!, broadcast: true });
let sent = 0;
try {
  const n = Number(a.discovers);
  for (let i = 0; i < n; i++) {
    const p = clientPacket({ mac: randomMac(), kind: "pxe" }, i + 1, MessageType.Discover);
    sock.send(encode(p), "255.255.255.255", 67);
    sent++;
    // Short pauses let the veth backlog (1000 packets) drain: the flood arrives, not drops.
    if (i % 200 === 199) await new Promise((r) => setTimeout(r, 2));
  }
  if (a.decline) {
    const mac = a.mac ? new Uint8Array(a.mac.split(":").map((h) => parseInt(h, 16))) : randomMac();
    const p = clientPacket({ mac, kind: "linux" }, 0x5eed, MessageType.Decline, {
      serverId: a.server,
      requestedIp: a.decline,
    });
    sock.send(encode(p), "255.255.255.255", 67);
    sent++;
  }
} finally {
  await sock.close();
}
console.log(JSON.stringify({ sent }));
