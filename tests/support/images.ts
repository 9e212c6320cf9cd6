// An image row plus its (empty) rootfs dir, as an import leaves them: for tests of the registry,
// the API and the exports that need images to exist but not their content.
import { mkdirSync } from "node:fs";
import type { Context } from "../../src/context.ts";

export function addImage(ctx: Context, name: string, bootable = true): string {
  const id = Array.from(
    crypto.getRandomValues(new Uint8Array(32)),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
  ctx.db.prepare(
    `INSERT INTO images (id, name, created_at, size, files, bootable, reason)
     VALUES (?, ?, ?, 0, 0, ?, ?)`,
  ).run(id, name, new Date().toISOString(), bootable ? 1 : 0, bootable ? null : "no kernel");
  mkdirSync(ctx.data.rootfs(id), { recursive: true });
  return id;
}
