// Runs serve() with a JSON config (argv[0], merged over the defaults) until SIGTERM; prints
// `READY {"host":…,"port":…}` on stdout once listening. Used by tests/dhcp_netns.ts.
import { defaultConfig, type ServerConfig } from "../src/config.ts";
import { serve } from "../src/server.ts";
import type { DriverConfig } from "./dhcp_netns.ts";

const partial = JSON.parse(Deno.args[0]) as DriverConfig;
const base = defaultConfig();
const config: ServerConfig = {
  ...base,
  ...partial,
  dhcp: { ...base.dhcp, ...partial.dhcp },
  nfs: { ...base.nfs, mode: "off", ...partial.nfs },
  tftp: { ...base.tftp, ...partial.tftp },
};
const server = await serve(config);
console.log(`READY ${JSON.stringify(server.http)}`);
const stop = async () => {
  await server.close();
  Deno.exit(0);
};
Deno.addSignalListener("SIGTERM", stop);
Deno.addSignalListener("SIGINT", stop);
